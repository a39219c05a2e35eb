#!/usr/bin/env python3
"""Time per output token of constrained vs unconstrained chat requests on a running
`tessera serve`, at batch 1 and batch 32 (concurrent streams), in one session.

    python3 tools/bench/constrained.py --base-url http://127.0.0.1:8000/v1 \
        --model smollm2-135m-instruct --out benches/results/constrained_<isa>.json

Each request streams 64 tokens (the grammars cannot end sooner: a string with a minimum
length, an array with a minimum item count; the unconstrained request ignores
end-of-sequence). Time per token of a request = (last token time - first token time) /
(tokens - 1), so prefill is left out. Rounds alternate the variants so that machine noise
falls on all of them; medians over requests and rounds are reported, with the ratio of
each constrained variant to the unconstrained one.
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request

TOKENS = 64
VARIANTS = {
    "unconstrained": {"ignore_eos": True},
    "json_long_string": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "story", "schema": {
            "type": "object", "properties": {"story": {"type": "string", "minLength": 2000}},
            "required": ["story"], "additionalProperties": False}}},
    },
    "json_array_of_objects": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "items", "schema": {
            "type": "object",
            "properties": {"items": {"type": "array", "minItems": 200, "items": {
                "type": "object",
                "properties": {"kind": {"enum": ["tool", "food", "toy"]},
                               "price": {"type": "integer", "minimum": 0, "maximum": 999},
                               "ok": {"type": "boolean"}},
                "required": ["kind", "price", "ok"], "additionalProperties": False}}},
            "required": ["items"], "additionalProperties": False}}},
    },
}


def one(base_url, model, extra, seed, out, i):
    body = dict(model=model, messages=[{"role": "user", "content": f"Write item list number {seed}."}],
                max_tokens=TOKENS, temperature=1, seed=seed, stream=True, **extra)
    req = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    stamps = []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                stamps.append(time.perf_counter())
    out[i] = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else None


def batch(base_url, model, extra, size, seed0):
    out = [None] * size
    threads = [threading.Thread(target=one, args=(base_url, model, extra, seed0 + i, out, i)) for i in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for x in out if x is not None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--out", required=True)
    ap.add_argument("--isa", default="unknown")
    args = ap.parse_args()
    raw = {}
    for size in [int(b) for b in args.batches.split(",")]:
        per = {name: [] for name in VARIANTS}
        reps = args.rounds * (4 if size == 1 else 1)
        for r in range(reps):
            for name, extra in VARIANTS.items():
                per[name] += batch(args.base_url, args.model, extra, size, 1000 * r)
        raw[size] = per
    summary = {}
    for size, per in raw.items():
        med = {name: statistics.median(v) * 1e3 for name, v in per.items()}
        summary[f"batch_{size}"] = {
            "ms_per_token_median": med,
            "ratio_to_unconstrained": {n: med[n] / med["unconstrained"] for n in med},
            "samples": {n: len(v) for n, v in per.items()},
        }
    result = {"isa": args.isa, "tokens_per_request": TOKENS, "summary": summary,
              "raw_seconds_per_token": {str(k): v for k, v in raw.items()}}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
