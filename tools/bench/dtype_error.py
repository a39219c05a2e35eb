"""How far a weight precision moves Tessera from the Hugging Face float32 references.

For every prompt of ../shared/reference/reference_public.json (plain form) and each
`--dtype`, runs `tessera generate --json --top-logits 5 --ignore-eos` (greedy, 32 tokens)
and reports: whether the prompt ids match, how many leading greedy tokens equal the
reference's, and the largest difference of the last prompt position's top-5 logits (over
the ids both list). Writes the rows as JSON. Builds nothing.

A dtype `W:KV` also sets the KV cache's storage (`--kv-dtype KV`), e.g. `f32:bf16`.

Usage:
  python3 tools/bench/dtype_error.py --dtypes f32,bf16,f32:bf16 --out benches/results/dtype-error.json
"""

import argparse
import json
import subprocess
import time


def generate(a, dtype, text):
    weights, _, kv = dtype.partition(":")
    cmd = [a.tessera, "generate", "--model", a.model, "--dtype", weights, "--prompt", text,
           "--max-tokens", str(a.tokens), "--ignore-eos", "--json", "--top-logits", "5"]
    if kv:
        cmd += ["--kv-dtype", kv]
    if a.isa:
        cmd += ["--isa", a.isa]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tessera", default="target/release/tessera")
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--reference", default="../shared/reference/reference_public.json")
    ap.add_argument("--dtypes", default="f32,bf16")
    ap.add_argument("--isa", default=None)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    refs = json.load(open(a.reference))["results"]
    rows = []
    print(f"| dtype | prompt | prompt ids equal | leading greedy tokens equal (of {a.tokens}) | "
          "max top-5 logit difference |")
    print("|---|---|---|---:|---:|")
    for dtype in a.dtypes.split(","):
        for r in refs:
            ref = r["plain"]
            got = generate(a, dtype, r["text"])
            agree = 0
            for x, y in zip(got["completion_ids"], ref["greedy_ids"][: a.tokens]):
                if x != y:
                    break
                agree += 1
            want = {t["id"]: t["logit"] for t in ref["top5_last"]}
            diffs = [abs(t["logit"] - want[t["id"]]) for t in got["prompt_top_logits"] if t["id"] in want]
            row = {"dtype": dtype, "id": r["id"], "prompt_ids_equal": got["prompt_ids"] == ref["prompt_ids"],
                   "greedy_agree": agree, "max_top5_logit_diff": max(diffs) if diffs else None}
            rows.append(row)
            print(f"| {dtype} | {r['id']} | {row['prompt_ids_equal']} | {agree} | "
                  f"{row['max_top5_logit_diff']:.4f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "isa": a.isa, "tokens": a.tokens, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
