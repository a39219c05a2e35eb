"""Single-sequence benchmark of Tessera against its peers, measured in one run.

Alternates rounds of: read bandwidth (`tessera bench bandwidth`), Tessera at tp 1 and
tp 2 (`tessera bench latency`), llama.cpp F32 (`llama-bench -p 512 -n 128 -t 2`) and
Hugging Face transformers float32 (`tools/peers/bench_transformers.py`), then prints a
Markdown table of medians, ratios and the bandwidth bound, and writes all raw numbers as
JSON. Run on an idle machine (check `uptime`).

Usage:
  python3 tools/bench/latency.py --tessera target/release/tessera \
      --model models/smollm2-135m-instruct --peers /opt/tessera-peers \
      --python /opt/pyref/bin/python --rounds 3 --out benches/results/latency.json
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import time


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_bench(peers):
    cmd = [f"{peers}/LB/bin/llama-bench", "-m", f"{peers}/smollm2-f32.gguf", "-p", "512", "-n", "128",
           "-t", "2", "-r", "3", "-o", "json"]
    rows = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    res = {}
    for r in rows:
        key = "prefill" if r["n_prompt"] > 0 else "decode"
        res[key] = r["avg_ts"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tessera", default="target/release/tessera")
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--peers", default="/opt/tessera-peers")
    ap.add_argument("--python", default="/opt/pyref/bin/python")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    raw = {"bandwidth": [], "tp1": [], "tp2": [], "llama.cpp": [], "transformers": []}
    for rnd in range(a.rounds):
        print(f"round {rnd + 1}/{a.rounds}", file=sys.stderr)
        raw["bandwidth"].append(run_json([a.tessera, "bench", "bandwidth", "--repeats", "5", "--mib", "1024"]))
        for tp in (1, 2):
            r = run_json([a.tessera, "bench", "latency", "--model", a.model, "--tp", str(tp), "--repeats", "3"])
            raw[f"tp{tp}"].append(r)
        raw["llama.cpp"].append(llama_bench(a.peers))
        raw["transformers"].append(run_json([a.python, "tools/peers/bench_transformers.py", "--model", a.model, "--repeats", "2"]))

    # The bound is the largest bandwidth sample of any probe (streaming read or GEMV), so no
    # measured decode rate can honestly exceed it; check that none does.
    bw = max(b["bound_gb_s"] for b in raw["bandwidth"])
    wbytes = raw["tp1"][0]["weight_bytes_per_token"]
    bound = bw * 1e9 / wbytes
    med = lambda xs: statistics.median(xs)
    rows = {
        "tessera tp1": (med([r["decode_tok_s_median"] for r in raw["tp1"]]), med([r["prefill_tok_s_median"] for r in raw["tp1"]])),
        "tessera tp2": (med([r["decode_tok_s_median"] for r in raw["tp2"]]), med([r["prefill_tok_s_median"] for r in raw["tp2"]])),
        "llama.cpp F32": (med([r["decode"] for r in raw["llama.cpp"]]), med([r["prefill"] for r in raw["llama.cpp"]])),
        "transformers f32": (med([r["decode_tok_s_median"] for r in raw["transformers"]]), med([r["prefill_tok_s_median"] for r in raw["transformers"]])),
    }
    lc, tf = rows["llama.cpp F32"], rows["transformers f32"]
    print(f"read bandwidth (2 threads, best of stream and GEMV probes): {bw:.1f} GB/s; weights per token "
          f"{wbytes / 1e6:.0f} MB; batch-1 decode bound {bound:.1f} tok/s")
    over = [s for tp in ("tp1", "tp2") for r in raw[tp] for s in r["decode_tok_s_all"] if s > bound]
    if over:
        print(f"WARNING: decode samples above the bound {bound:.1f}: {over} (the probe under-reads)")
    print()
    print("| engine | decode tok/s | of bound | vs llama.cpp | vs transformers | prefill-512 tok/s | vs llama.cpp | vs transformers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (d, p) in rows.items():
        print(f"| {name} | {d:.1f} | {d / bound:.2f} | {d / lc[0]:.2f} | {d / tf[0]:.2f} | {p:.0f} | {p / lc[1]:.2f} | {p / tf[1]:.2f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "bandwidth_gb_s": bw, "bound_tok_s": bound, "raw": raw}, f, indent=1)


if __name__ == "__main__":
    main()
