"""Greedy agreement of Tessera and llama.cpp on the same quantized GGUF file.

Starts `tessera serve --dtype DTYPE` and `llama-server -m GGUF` (f32 KV cache, flash
attention off, 1 slot), sends every prompt of ../shared/reference/reference_public.json
(plain form) to both as a greedy `/v1/completions` request with `logprobs: 5`, and reports
per prompt: how many leading tokens agree, and the largest difference of the top-5
log-probabilities (over the ids both list) at the steps before the first disagreement.
Writes the raw responses and the summary as JSON. Builds nothing.

llama.cpp multiplies Q4_1 weights with activations it quantizes to 8 bits (Q8_1); Tessera
rounds them to 16 bits (i16 per block of 32) and keeps f32 elsewhere. The two are the same
model computed two ways, so log-probabilities differ by the activation rounding (mostly
llama.cpp's); tokens differ only where the top two are that close.

Usage:
  python3 tools/bench/q4_1_agreement.py --out benches/results/q4_1-agreement.json
"""

import argparse
import json
import math
import subprocess
import time
import urllib.request


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def wait_health(url):
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except Exception:
            time.sleep(0.5)
    raise SystemExit(f"{url} never became healthy")


def completion(base, model, prompt, n):
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "logprobs": 5,
            "ignore_eos": True}
    r = post(f"{base}/v1/completions", body)
    lp = r["choices"][0]["logprobs"]
    if "content" in lp:  # llama-server answers in the chat shape: one entry per token
        lp = {"tokens": [c["token"] for c in lp["content"]],
              "top_logprobs": [{t["token"]: t["logprob"] for t in c["top_logprobs"]} for c in lp["content"]]}
    return {"tokens": lp["tokens"], "top": lp["top_logprobs"], "text": r["choices"][0]["text"]}


def compare(a, b):
    agree = 0
    for x, y in zip(a["tokens"], b["tokens"]):
        if x != y:
            break
        agree += 1
    worst = 0.0
    for step in range(min(agree + 1, len(a["top"]), len(b["top"]))):
        ta, tb = a["top"][step], b["top"][step]
        for tok, lpa in ta.items():
            if tok in tb and math.isfinite(lpa) and math.isfinite(tb[tok]):
                worst = max(worst, abs(lpa - tb[tok]))
    return agree, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tessera", default="target/release/tessera")
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--dtype", default="q4_1")
    ap.add_argument("--gguf", default="models/.cache/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--llama-bin", default="/opt/tessera-peers/LB/bin")
    ap.add_argument("--reference", default="../shared/reference/reference_public.json")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    prompts = [(r["id"], r["text"]) for r in json.load(open(a.reference))["results"]]
    servers = {
        "tessera": [a.tessera, "serve", "--model", a.model, "--dtype", a.dtype, "--port", "18091"],
        "llama.cpp": [f"{a.llama_bin}/llama-server", "-m", a.gguf, "-np", "1", "-c", "4096", "-t", "2",
                      "-ctk", "f32", "-ctv", "f32", "-fa", "off", "--port", "18092"],
    }
    ports = {"tessera": 18091, "llama.cpp": 18092}
    raw = {}
    for name, cmd in servers.items():
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{ports[name]}"
            wait_health(f"{base}/health")
            with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as r:
                model = json.loads(r.read())["data"][0]["id"]
            raw[name] = {pid: completion(base, model, text, a.tokens) for pid, text in prompts}
        finally:
            proc.terminate()
            proc.wait()
    rows = []
    print(f"| prompt | leading tokens equal (of {a.tokens}) | max top-5 logprob difference before the first disagreement |")
    print("|---|---:|---:|")
    for pid, _ in prompts:
        agree, worst = compare(raw["tessera"][pid], raw["llama.cpp"][pid])
        rows.append({"id": pid, "agree": agree, "max_logprob_diff": worst})
        print(f"| {pid} | {agree} | {worst:.4f} |")
    total = sum(r["agree"] for r in rows)
    print(f"\n{total} of {a.tokens * len(rows)} tokens before the first disagreement; "
          f"{sum(r['agree'] == a.tokens for r in rows)} of {len(rows)} prompts equal throughout")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "dtype": a.dtype, "gguf": a.gguf, "rows": rows, "raw": raw},
                      f, indent=1)


if __name__ == "__main__":
    main()
