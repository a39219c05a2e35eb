#!/usr/bin/env python3
"""Compare two reference files in the format of tools/gen_reference.py.

    python3 tools/compare_reference.py A.json B.json [--atol 1e-4]

For every prompt id present in both files and each form (``plain``, ``chat``) it checks:

* ``prompt_ids`` identical (on a mismatch: first differing index and both ids there),
* ``greedy_ids`` identical (on a mismatch: first differing step and A's margin at that step;
  a margin near float32 rounding would make a flip legitimate),
* ``top5_last`` ids identical and in the same order, logits within ``--atol``
  (log-probabilities are reported, and checked with the same tolerance),

and reports ``chat_rendered`` differences, ``greedy_top1_logit`` max difference over the
common prefix of identical greedy ids, ``last_logits_sum``/``last_logits_l2`` differences and
``generate_agrees`` flags. Prompt ids present in only one file are failures.

Exit status 0 when everything matches, 1 otherwise. Needs only the Python standard library
(any python3). For regenerating references the environment is:

    python3 -m venv VENV && VENV/bin/pip install torch==2.15.0 transformers==5.24.0 \
        gguf==0.19.0 accelerate==1.15.0 safetensors tokenizers numpy
"""

import argparse
import json
import sys

FORMS = ("plain", "chat")


def first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_form(pid, form, fa, fb, atol):
    fails, notes = [], []
    tag = f"{pid}/{form}"

    pa, pb = fa["prompt_ids"], fb["prompt_ids"]
    if pa != pb:
        i = first_diff(pa, pb)
        fails.append(
            f"{tag}: prompt_ids differ (len {len(pa)} vs {len(pb)}), first at index {i}: "
            f"{pa[i:i + 4]} vs {pb[i:i + 4]}"
        )

    ta, tb = fa["top5_last"], fb["top5_last"]
    ids_a, ids_b = [t["id"] for t in ta], [t["id"] for t in tb]
    if ids_a != ids_b:
        fails.append(f"{tag}: top5 ids differ: {ids_a} vs {ids_b}")
    by_b = {t["id"]: t for t in tb}
    max_dl = max_dp = 0.0
    for t in ta:
        u = by_b.get(t["id"])
        if u is None:
            continue
        max_dl = max(max_dl, abs(t["logit"] - u["logit"]))
        max_dp = max(max_dp, abs(t["logprob"] - u["logprob"]))
    if max_dl > atol:
        fails.append(f"{tag}: top5 logits differ by up to {max_dl:.6g} (> {atol:g})")
    if max_dp > atol:
        fails.append(f"{tag}: top5 logprobs differ by up to {max_dp:.6g} (> {atol:g})")

    ga, gb = fa["greedy_ids"], fb["greedy_ids"]
    if ga != gb:
        i = first_diff(ga, gb)
        margin = fa.get("greedy_margin", [None] * (i + 1))
        m = margin[i] if i is not None and i < len(margin) else None
        fails.append(
            f"{tag}: greedy_ids differ (len {len(ga)} vs {len(gb)}), first at step {i}: "
            f"{ga[i] if i < len(ga) else None} vs {gb[i] if i < len(gb) else None} "
            f"(A margin there: {m})"
        )
    common = first_diff(ga, gb)
    n = len(ga) if common is None else common
    # logits up to and including the first differing step are still comparable
    n_cmp = min(n + 1, len(fa.get("greedy_top1_logit", [])), len(fb.get("greedy_top1_logit", [])))
    max_dt = max(
        (abs(x - y) for x, y in zip(fa["greedy_top1_logit"][:n_cmp], fb["greedy_top1_logit"][:n_cmp])),
        default=0.0,
    )
    dsum = abs(fa["last_logits_sum"] - fb["last_logits_sum"])
    dl2 = abs(fa["last_logits_l2"] - fb["last_logits_l2"])
    notes.append(
        f"{tag}: n_prompt {len(pa)}/{len(pb)}, top5 |dlogit| {max_dl:.2g}, |dlogprob| {max_dp:.2g}, "
        f"greedy_top1 |d| {max_dt:.2g} over {n_cmp} steps, |dsum| {dsum:.3g}, |dl2| {dl2:.3g}"
    )
    for name, f in (("A", fa), ("B", fb)):
        if f.get("generate_agrees") is False:
            notes.append(f"{tag}: {name} says generate() disagrees with its cached greedy loop")
    return fails, notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--atol", type=float, default=1e-4, help="top5 logit tolerance (default 1e-4)")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures and the verdict only")
    args = ap.parse_args()

    with open(args.a) as f:
        A = json.load(f)
    with open(args.b) as f:
        B = json.load(f)

    for k in ("transformers", "torch", "model"):
        va, vb = A.get("meta", {}).get(k), B.get("meta", {}).get(k)
        if va != vb and not args.quiet:
            print(f"meta.{k}: {va!r} vs {vb!r}")

    ra = {r["id"]: r for r in A["results"]}
    rb = {r["id"]: r for r in B["results"]}
    fails, notes = [], []
    for pid in ra.keys() - rb.keys():
        fails.append(f"{pid}: only in A")
    for pid in rb.keys() - ra.keys():
        fails.append(f"{pid}: only in B")

    n_forms = 0
    for pid in [p for p in ra if p in rb]:
        xa, xb = ra[pid], rb[pid]
        if xa.get("text") != xb.get("text"):
            fails.append(f"{pid}: text differs: {xa.get('text')!r} vs {xb.get('text')!r}")
        if xa.get("chat_rendered") != xb.get("chat_rendered"):
            fails.append(
                f"{pid}: chat_rendered differs: {xa.get('chat_rendered')!r} vs {xb.get('chat_rendered')!r}"
            )
        for form in FORMS:
            if form not in xa or form not in xb:
                if (form in xa) != (form in xb):
                    fails.append(f"{pid}/{form}: present in only one file")
                continue
            n_forms += 1
            f_, n_ = compare_form(pid, form, xa[form], xb[form], args.atol)
            fails += f_
            notes += n_

    if not args.quiet:
        for line in notes:
            print(line)
    for line in fails:
        print("FAIL " + line)
    common = len([p for p in ra if p in rb])
    if fails:
        print(f"MISMATCH: {len(fails)} failure(s) over {common} prompts / {n_forms} forms")
        return 1
    print(
        f"MATCH: {common} prompts / {n_forms} forms: prompt_ids and greedy_ids identical, "
        f"top5 logits within {args.atol:g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
