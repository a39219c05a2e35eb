#!/usr/bin/env python3
"""Prefill pacing in a model: what `--max-itl-ms auto` costs and gains, without a server.

Two parts:
  --fit LOG.. fits `step ms = fixed + per_row x decode rows + per_token x prefill tokens` to the
              `step` lines of a `tessera serve` log run with RUST_LOG=tessera_engine=trace
              (decode-only steps give fixed and per_row, mixed steps per_token);
  (default)   simulates tools/bench/serve.sh's workload (closed-loop clients, REQ requests of
              IN prompt and OUT output tokens) on that cost model, with the engine's rule:
              decodes first, then prefill chunks oldest first; `off` lets prefill take the
              whole 512-token step, `auto F` caps it so a step with decodes predicts at most
              F x the decode-only step of the queue's batch (at least 16 tokens), as
              crates/tessera-engine/src/engine/pace.rs does with its fitted model.
It prints output tok/s (and its ratio to `off`), ITL p50/p99 and their ratio per level and
rule: medians over seeds, with 5% step-time noise and 0.5-8 ms client turnaround.

Usage:
  python3 tools/bench/pacing_sim.py --fit benches/results/2026-12-05-serve-intel/trace/*.log
  python3 tools/bench/pacing_sim.py --cost 17.5,1.67,0.91 --factors 1.5,1.75,2.0
"""

import argparse
import random
import re
import statistics


def fit(paths):
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    steps = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = ansi.sub("", line)
                if "step" in line and "prefill=" in line:
                    d = dict(re.findall(r"(\w+)=([\d.]+)", line))
                    steps.append((int(d["prefill"]), int(d["decodes"]), float(d["ms"])))
    dec = [(d, ms) for p, d, ms in steps if p == 0 and d > 0]
    n = len(dec)
    mx, my = sum(d for d, _ in dec) / n, sum(ms for _, ms in dec) / n
    per_row = sum((d - mx) * (ms - my) for d, ms in dec) / sum((d - mx) ** 2 for d, _ in dec)
    fixed = my - per_row * mx
    mixed = [(ms - fixed - per_row * d) / p for p, d, ms in steps if p > 0 and d > 0]
    per_token = statistics.median(mixed)
    print(f"{len(steps)} steps: fixed {fixed:.2f} ms, per decode row {per_row:.3f} ms, "
          f"per prefill token {per_token:.3f} ms (median over {len(mixed)} mixed steps)")


def simulate(cost, conc, rule, seed, req=64, inl=64, outl=64, max_tokens=512):
    fixed, per_row, per_token = cost
    rnd = random.Random(seed)
    step_ms = lambda p, d: fixed + per_row * d + per_token * p
    t, sent, done = 0.0, min(conc, req), 0
    arrivals = [0.0] * sent
    live, order, itls = {}, [], []
    next_id = 0
    while done < req:
        for a in [a for a in arrivals if a <= t]:
            arrivals.remove(a)
            live[next_id] = {"left": inl, "gen": 0, "last": None}
            order.append(next_id)
            next_id += 1
        if not order:
            t = min(arrivals)
            continue
        decs = [i for i in order if live[i]["left"] == 0]
        d = len(decs)
        if d == 0 or rule == "off":
            budget = max_tokens - d
        else:
            target = rule * step_ms(0, len(order))
            budget = min(max(int((target - fixed - per_row * d) / per_token), 16), max_tokens - d)
        chunks = {}
        for i in order:
            if live[i]["left"] > 0 and budget > 0:
                c = min(budget, live[i]["left"])
                chunks[i], budget = c, budget - c
        t += step_ms(sum(chunks.values()), d) * (1 + 0.05 * rnd.gauss(0, 1))
        for i, c in chunks.items():
            live[i]["left"] -= c
            if live[i]["left"] == 0:
                live[i]["gen"], live[i]["last"] = 1, t
        for i in decs:
            s = live[i]
            itls.append(t - s["last"])
            s["last"], s["gen"] = t, s["gen"] + 1
            if s["gen"] >= outl:
                order.remove(i)
                done += 1
                if sent < req:
                    arrivals.append(t + rnd.uniform(0.5, 8.0))
                    sent += 1
    itls.sort()
    q = lambda x: itls[min(len(itls) - 1, int(x * len(itls)))]
    return req * outl / t * 1e3, q(0.5), q(0.99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", nargs="+", help="trace logs of tessera serve to fit the cost model to")
    ap.add_argument("--cost", default="17.5,1.67,0.91", help="fixed,per_row,per_token in ms")
    ap.add_argument("--levels", default="4,16,64")
    ap.add_argument("--factors", default="1.5,1.75,2.0")
    ap.add_argument("--seeds", type=int, default=7)
    a = ap.parse_args()
    if a.fit:
        fit(a.fit)
        return
    cost = [float(v) for v in a.cost.split(",")]
    rules = ["off"] + [float(f) for f in a.factors.split(",")]
    for conc in [int(c) for c in a.levels.split(",")]:
        base = None
        for rule in rules:
            runs = [simulate(cost, conc, rule, s) for s in range(a.seeds)]
            tok, p50, p99 = (statistics.median(r[k] for r in runs) for k in range(3))
            base = base or tok
            name = "off" if rule == "off" else f"auto {rule}"
            print(f"conc {conc:3d} {name:9s} tok/s {tok:6.1f} ({tok / base:.3f}) "
                  f"ITL p50 {p50:6.1f} p99 {p99:6.1f} ms, p99/p50 {p99 / p50:.2f}")


if __name__ == "__main__":
    main()
