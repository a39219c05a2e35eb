#!/usr/bin/env python3
"""Offline summarization benchmark: `tessera batch` against the same work one document at a
time and against llama.cpp's server with parallel slots, measured in one run.

Workload: N documents of about 400 tokens (windows at distinct offsets of a corpus of
public license texts and the repository's own river-town fixture), each summarized greedily
with at most 64 new tokens under the same instruction. Tokens are counted with the model's
tokenizer; generated tokens come from each side's own usage counts.

Usage (idle machine, release binary built, peers built by tools/peers/build_llamacpp.sh):
    python3 tools/bench/batch.py [--tessera target/release/tessera] [--peers /opt/tessera-peers]
Writes benches/results/batch-<date>.json and prints a Markdown table last.
"""

import argparse
import concurrent.futures
import datetime
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

MODEL = "models/smollm2-135m-instruct"
TEMPLATE = "Summarize the following text in a few sentences.\n\n{text}"


def corpus_words():
    seen, words = set(), []
    files = sorted(glob.glob("/usr/share/common-licenses/*")) + [
        "tests/fixtures/batch/river_town.txt"
    ]
    for path in files:
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        with open(real, encoding="utf-8", errors="replace") as f:
            words.extend(f.read().split())
    return words


def make_documents(n, target_tokens, tokenizer):
    words = corpus_words()
    docs = []
    for i in range(n):
        start = (i * 131) % len(words)
        take = int(target_tokens * 0.7)
        while True:
            chunk = [words[(start + j) % len(words)] for j in range(take)]
            text = " ".join(chunk)
            count = len(tokenizer.encode(text).ids)
            if count >= target_tokens or take > 4 * target_tokens:
                break
            take += max(1, (target_tokens - count) // 2)
        docs.append({"id": f"doc-{i:04d}", "text": text, "tokens": count})
    return docs


def run_tessera(binary, docs, concurrency, workdir, tag):
    inp = os.path.join(workdir, f"{tag}-in.jsonl")
    out = os.path.join(workdir, f"{tag}-out.jsonl")
    with open(inp, "w") as f:
        for d in docs:
            f.write(json.dumps({"id": d["id"], "text": d["text"]}) + "\n")
    tpl = os.path.join(workdir, "template.txt")
    with open(tpl, "w") as f:
        f.write(TEMPLATE)
    cmd = [binary, "batch", "--model", MODEL, "--task", "summarize", "--input", inp,
           "--output", out, "--prompt-template", tpl, "--max-tokens", "64"]
    if concurrency:
        cmd += ["--max-concurrency", str(concurrency)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    generated = prompt = answered = 0
    with open(out) as f:
        for line in f:
            row = json.loads(line)
            answered += 1
            generated += row["usage"]["completion_tokens"]
            prompt += row["usage"]["prompt_tokens"]
    assert answered == len(docs), f"{tag}: {answered} of {len(docs)} answered"
    return {"docs": len(docs), "wall_s": wall, "docs_per_s": len(docs) / wall,
            "generated_tokens": generated, "prompt_tokens": prompt,
            "generated_tok_s": generated / wall}


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def run_llama_server(peers, docs, slots):
    port = 18090
    server = subprocess.Popen(
        [f"{peers}/LB/bin/llama-server", "-m", f"{peers}/smollm2-f32.gguf", "-np", str(slots),
         "-c", str(slots * 1024), "-t", "2", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except Exception:
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"

        def one(d):
            body = {"model": "smollm2",
                    "messages": [{"role": "user", "content": TEMPLATE.replace("{text}", d["text"])}],
                    "max_tokens": 64, "temperature": 0}
            r = post(url, body)
            return r["usage"]["completion_tokens"], r["usage"]["prompt_tokens"]

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(slots) as pool:
            results = list(pool.map(one, docs))
        wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()
    generated = sum(g for g, _ in results)
    return {"docs": len(docs), "wall_s": wall, "docs_per_s": len(docs) / wall,
            "generated_tokens": generated, "prompt_tokens": sum(p for _, p in results),
            "generated_tok_s": generated / wall, "slots": slots}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tessera", default="target/release/tessera")
    ap.add_argument("--peers", default="/opt/tessera-peers")
    ap.add_argument("--docs", type=int, default=256)
    ap.add_argument("--serial-docs", type=int, default=32,
                    help="documents for the one-at-a-time run (its rate is per document)")
    ap.add_argument("--doc-tokens", type=int, default=400)
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(MODEL, "tokenizer.json"))
    docs = make_documents(args.docs, args.doc_tokens, tok)
    lengths = [d["tokens"] for d in docs]
    results = {"date": datetime.date.today().isoformat(), "documents": len(docs),
               "doc_tokens_median": statistics.median(lengths), "max_new_tokens": 64}
    with tempfile.TemporaryDirectory() as work:
        results["tessera_batch"] = run_tessera(args.tessera, docs, None, work, "batch")
        print("tessera batch", results["tessera_batch"], file=sys.stderr)
        results["tessera_one_at_a_time"] = run_tessera(
            args.tessera, docs[: args.serial_docs], 1, work, "serial")
        print("one at a time", results["tessera_one_at_a_time"], file=sys.stderr)
    if os.path.exists(f"{args.peers}/LB/bin/llama-server"):
        results["llamacpp_server"] = run_llama_server(args.peers, docs, args.slots)
        print("llama-server", results["llamacpp_server"], file=sys.stderr)
    out = args.out or f"benches/results/batch-{results['date']}.json"
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    base = results["tessera_batch"]["docs_per_s"]
    print("| run | docs | wall s | docs/s | generated tok/s | tessera batch / run |")
    print("|---|---|---|---|---|---|")
    for key in ["tessera_batch", "tessera_one_at_a_time", "llamacpp_server"]:
        if key in results:
            r = results[key]
            print(f"| {key} | {r['docs']} | {r['wall_s']:.1f} | {r['docs_per_s']:.2f} | "
                  f"{r['generated_tok_s']:.1f} | {base / r['docs_per_s']:.2f}x |")


if __name__ == "__main__":
    main()
