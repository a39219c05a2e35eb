"""Tessera against llama.cpp on the CPU, at the same precision, measured in one run.

For each precision (f32, bf16, q4_1) it alternates rounds of:
  - batch-1 decode and prefill-512: `tessera bench latency --dtype P` / `llama-bench -p 512 -n 128`
  - 64 requests x (128 in + 128 out), total tok/s: `tessera bench throughput --dtype P` /
    `llama-batched-bench -npp 128 -ntg 128 -npl 64`
and the read-bandwidth probe (`tessera bench bandwidth`, also rereading each precision's
weight bytes), then prints a Markdown table of medians and ratios, MFU, and each
precision's fastest decode read against the bound at its working set, and writes every raw
number as JSON. It builds nothing: llama.cpp comes
from `tools/peers/build_llamacpp.sh` (its `LB/bin`, or an AVX2-only build in another
directory for `--isa avx2`), the GGUF files from the same script and `tessera pull`.

Both sides run the same weights: llama.cpp's f32 and bf16 files are exact conversions of
the shipped Q4_1 file, and Tessera's `--dtype q4_1` runs that file's blocks as they are.
`--isa avx2` forces Tessera's AVX2 kernels (`tessera --isa avx2`) on an AVX-512 machine;
pair it with a llama.cpp built without AVX-512 and say so wherever the numbers are used.

KV cache: llama.cpp keeps its default (f16 keys and values) unless `--llama-kv f32`
(`-ctk/-ctv`); Tessera keeps its default (f32) unless `--kv-dtype bf16`, which, like
llama.cpp's default, stores 16 bits per value. The JSON records both.

Usage (idle machine, check `uptime`):
  python3 tools/bench/cpu_vs_llamacpp.py --rounds 3 --out benches/results/cpu-vs-llamacpp.json
  python3 tools/bench/cpu_vs_llamacpp.py --isa avx2 --llama-bin /opt/tessera-peers/LB-avx2/bin ...
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import time

PRECISIONS = ("f32", "bf16", "q4_1")


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def run_json(cmd):
    return json.loads(run(cmd).strip().splitlines()[-1])


def cpu_flags():
    with open("/proc/cpuinfo") as f:
        text = f.read()
    model = re.search(r"model name\s*:\s*(.*)", text)
    flags = set(re.search(r"flags\s*:\s*(.*)", text).group(1).split())
    if "avx512f" in flags:
        isa = "avx512bf16" if "avx512_bf16" in flags else "avx512"
    else:
        isa = "avx2" if "avx2" in flags and "fma" in flags else "scalar"
    return (model.group(1) if model else "unknown"), isa


def run_peer(cmd):
    """A peer command's stdout, or None and its exit status when it fails (a crash is recorded,
    not a number, and the run goes on)."""
    try:
        return run(cmd), None
    except subprocess.CalledProcessError as e:
        print(f"{cmd[0]} failed on {cmd[2]}: exit status {e.returncode}", file=sys.stderr)
        return None, f"exit status {e.returncode}"


def llama_bench(binp, gguf, threads, kv_args):
    """Prefill-512 and decode-128 as two runs, so a peer that crashes on one still gives the
    other. A run that crashes is retried without weight repacking (`--repack 0`): on an
    Intel Xeon with AMX, llama.cpp's AMX repacked Q4_1 crashed on prompts (llama.cpp issue
    20824) but ran decode, so each cell takes the fastest configuration that runs."""
    res = {}
    for key, p, n in (("prefill", 512, 0), ("decode", 0, 128)):
        cmd = [f"{binp}/llama-bench", "-m", gguf, "-p", str(p), "-n", str(n),
               "-t", str(threads), "-r", "3", "-o", "json"] + kv_args
        stdout, err = run_peer(cmd)
        if err:
            res[f"{key}_error"] = err
            stdout, err = run_peer(cmd + ["--repack", "0"])
            res[f"{key}_repack"] = False
        res[key] = None if err else json.loads(stdout)[0]["avg_ts"]
    return res


def llama_batched(binp, gguf, threads, n, inp, out, kv_args):
    """64 requests' total tok/s, retried without repacking after a crash (see llama_bench)."""
    cmd = [f"{binp}/llama-batched-bench", "-m", gguf, "-npp", str(inp), "-ntg", str(out),
           "-npl", str(n), "-c", str(n * (inp + out)), "-t", str(threads)] + kv_args
    stdout, err = run_peer(cmd)
    res = {}
    if err:
        res = {"error": err, "repack": False}
        stdout, err = run_peer(cmd + ["--no-repack"])
    if err:
        return {"total_tok_s": None, **res, "error_no_repack": err}
    rows = [line for line in stdout.splitlines() if re.match(r"^\|\s*\d+", line)]
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    return {"total_tok_s": float(cells[-1]), "row": cells, **res}


def tessera(a, *args, kv=False):
    cmd = [a.tessera] + list(args)
    if a.isa:
        cmd += ["--isa", a.isa]  # an option of each bench subcommand, so it goes last
    if kv and a.kv_dtype:
        cmd += ["--kv-dtype", a.kv_dtype]
    return run_json(cmd)


def one_round(a, raw):
    for p in a.precisions:
        lat = tessera(a, "bench", "latency", "--model", a.model, "--dtype", p, "--repeats", "3",
                      "--threads", str(a.threads), kv=True)
        thr = tessera(a, "bench", "throughput", "--model", a.model, "--dtype", p, "--requests", "64",
                      "--input-len", "128", "--output-len", "128", "--threads", str(a.threads), "--json",
                      kv=True)
        raw["tessera"][p].append({"latency": lat, "throughput": thr})
        gguf = a.gguf[p]
        raw["llama.cpp"][p].append({"bench": llama_bench(a.llama_bin, gguf, a.threads, a.llama_kv_args),
                                    "batched": llama_batched(a.llama_bin, gguf, a.threads, 64, 128, 128,
                                                             a.llama_kv_args)})
    # The probe also rereads each precision's weight bytes: a model that fits a large L3
    # partly stays there between tokens, and its bound must cover that.
    sizes = ",".join(str(raw["tessera"][p][-1]["latency"]["weight_bytes_per_token"]) for p in a.precisions)
    raw["bandwidth"].append(tessera(a, "bench", "bandwidth", "--repeats", "5", "--mib", "1024",
                                    "--working-set-bytes", sizes))


def bound_check(a, raw):
    """Per precision: the fastest decode sample's weight read against the bound at that
    working set (the best of every probe), so no measured rate passes unchecked."""
    for p in a.precisions:
        bytes_ = raw["tessera"][p][-1]["latency"]["weight_bytes_per_token"]
        fastest = max(max(r["latency"]["decode_tok_s_all"]) for r in raw["tessera"][p])
        bound = max(ws["bound_gb_s"] for b in raw["bandwidth"] for ws in b["working_sets"]
                    if ws["bytes"] == bytes_)
        read = fastest * bytes_ / 1e9
        verdict = "within" if read <= bound else "EXCEEDS"
        print(f"bound {p}: fastest decode sample {fastest:.1f} tok/s x {bytes_ / 1e6:.0f} MB = "
              f"{read:.1f} GB/s, {verdict} the bound {bound:.1f} GB/s at that working set")


def med_or_none(xs):
    """Median of the runs that gave a number; None when the peer crashed in every round."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits):
    """A peer's rate for the table, or "crashed" when it gave none."""
    return "crashed" if x is None else f"{x:.{digits}f}"


def ratio(t, l):
    """Tessera over the peer for the table, or "-" when the peer gave no number."""
    return "-" if l is None else f"{t / l:.2f}"


def table(a, raw):
    med = statistics.median
    print(f"| precision | decode tok/s (T / L) | ratio | prefill-512 tok/s (T / L) | ratio "
          f"| 64 x (128+128) total tok/s (T / L) | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    summary = {}
    for p in a.precisions:
        t, l = raw["tessera"][p], raw["llama.cpp"][p]
        td = med([r["latency"]["decode_tok_s_median"] for r in t])
        tp = med([r["latency"]["prefill_tok_s_median"] for r in t])
        tt = med([r["throughput"]["total_tok_s"] for r in t])
        ld = med_or_none([r["bench"]["decode"] for r in l])
        lp = med_or_none([r["bench"]["prefill"] for r in l])
        lt = med_or_none([r["batched"]["total_tok_s"] for r in l])
        summary[p] = {"decode": [td, ld], "prefill": [tp, lp], "throughput": [tt, lt]}
        # A peer cell measured without repacking (the default crashed) is marked "nr".
        nr = {k: "nr" if any(r["bench"].get(f"{k}_repack") is False for r in l) else ""
              for k in ("decode", "prefill")}
        nr["batched"] = "nr" if any(r["batched"].get("repack") is False for r in l) else ""
        print(f"| {p} | {td:.1f} / {fmt(ld, 1)}{nr['decode']} | {ratio(td, ld)} "
              f"| {tp:.0f} / {fmt(lp, 0)}{nr['prefill']} | {ratio(tp, lp)} "
              f"| {tt:.0f} / {fmt(lt, 0)}{nr['batched']} | {ratio(tt, lt)} |")
    print("(nr: llama.cpp crashed with its default weight repacking and ran with it off)")
    return summary


def param_counts(model_dir):
    """Non-embedding matmul parameters of the layers, and of the output head."""
    with open(f"{model_dir}/config.json") as f:
        c = json.load(f)
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    hd = c.get("head_dim", h // c["num_attention_heads"])
    kv = c.get("num_key_value_heads", c["num_attention_heads"]) * hd
    q = c["num_attention_heads"] * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * inter
    return layers * per_layer, h * vocab


def mfu(a, raw, peak):
    """MFU of the 64-request runs: prompt tokens count 2 x layer parameters (they skip the
    output head), generated tokens 2 x (layer + head) parameters; over the GEMM peak of that
    precision's arithmetic measured in the same run (`tessera bench bandwidth`: f32 fmas for
    f32, bf16 pairs for bf16, Q4_1 blocks times i16 activations for q4_1)."""
    layers, head = param_counts(a.model)
    flops = 64 * (128 * 2 * layers + 128 * 2 * (layers + head))
    for p in a.precisions:
        t = statistics.median([r["throughput"]["wall_s"] for r in raw["tessera"][p]])
        pk = peak[p]
        print(f"MFU {p}: Tessera {flops / t / 1e9 / pk:.2f} (of {pk:.0f} GFLOP/s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tessera", default="target/release/tessera")
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--peers", default="/opt/tessera-peers")
    ap.add_argument("--llama-bin", default=None, help="llama.cpp bin directory (default PEERS/LB/bin)")
    ap.add_argument("--q4-1", default="models/.cache/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--isa", default=None, choices=["avx512bf16", "avx512", "avx2", "scalar"])
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kv-dtype", default=None, choices=["f32", "bf16"], help="Tessera's KV cache (default f32)")
    ap.add_argument("--llama-kv", default=None, choices=["f32", "f16"], help="llama.cpp's -ctk/-ctv (default f16)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    a.llama_kv_args = ["-ctk", a.llama_kv, "-ctv", a.llama_kv] if a.llama_kv else []
    a.llama_bin = a.llama_bin or f"{a.peers}/LB/bin"
    a.precisions = a.precisions.split(",")
    a.gguf = {"f32": f"{a.peers}/smollm2-f32.gguf", "bf16": f"{a.peers}/smollm2-bf16.gguf", "q4_1": a.q4_1}
    cpu, machine_isa = cpu_flags()
    raw = {"bandwidth": [], "tessera": {p: [] for p in a.precisions}, "llama.cpp": {p: [] for p in a.precisions}}
    for rnd in range(a.rounds):
        print(f"round {rnd + 1}/{a.rounds}", file=sys.stderr)
        one_round(a, raw)
    bw = max(b["bound_gb_s"] for b in raw["bandwidth"])
    f32_peak = max(b["gemm_gflop_s_max"] for b in raw["bandwidth"])
    bf16_peak = max(b.get("gemm_bf16_gflop_s_max", 0.0) for b in raw["bandwidth"]) or f32_peak
    q4_1_peak = max(b.get("gemm_q4_1_gflop_s_max", 0.0) for b in raw["bandwidth"]) or f32_peak
    peak = {"f32": f32_peak, "q4_1": q4_1_peak, "bf16": bf16_peak}
    print(f"CPU: {cpu}; machine ISA {machine_isa}; Tessera kernels {a.isa or machine_isa}; "
          f"llama.cpp {a.llama_bin}; KV cache Tessera {a.kv_dtype or 'f32'}, llama.cpp {a.llama_kv or 'f16'}; "
          f"{a.threads} threads; read bandwidth bound (best probe) {bw:.1f} GB/s; "
          f"GEMM peak f32 {f32_peak:.0f}, bf16 {bf16_peak:.0f}, q4_1 {q4_1_peak:.0f} GFLOP/s\n")
    summary = table(a, raw)
    mfu(a, raw, peak)
    bound_check(a, raw)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "cpu": cpu, "machine_isa": machine_isa,
                       "tessera_isa": a.isa or machine_isa, "llama_bin": a.llama_bin, "threads": a.threads,
                       "tessera_kv": a.kv_dtype or "f32", "llama_kv": a.llama_kv or "f16",
                       "bandwidth_gb_s": bw, "summary_T_over_L": summary, "raw": raw}, f, indent=1)


if __name__ == "__main__":
    main()
