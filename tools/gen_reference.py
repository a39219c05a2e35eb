#!/usr/bin/env python3
"""Regenerate Hugging Face transformers reference outputs for a Llama-family model directory.

Produces the format of ``/work/shared/reference/reference_public.json``: ``{"meta": {...},
"results": [...]}`` where every prompt of the prompts file gets

    {id, kind, text, messages, chat_rendered,
     plain: {n_prompt_tokens, prompt_ids, top5_last: [{id, logit, logprob}] * 5,
             last_logits_sum, last_logits_l2, greedy_ids, greedy_text, greedy_top1_logit,
             greedy_margin, min_greedy_margin, first_eos_index, generate_agrees},
     chat:  {... same ...}}

* ``plain``: the text as is, tokenized without BOS (no special tokens added).
* ``chat``: one user message rendered with the chat template from ``tokenizer_config.json``
  (``apply_chat_template(..., chat_template=<that template>, add_generation_prompt=True)``),
  tokenized with special tokens parsed and nothing added.
* ``top5_last``: five highest logits at the last prompt position, with log-probabilities.
* ``greedy_ids``: ``--new-tokens`` (default 32) tokens of greedy argmax decoding with a KV cache,
  not stopped at end-of-sequence; ``greedy_top1_logit``/``greedy_margin`` per step (margin is
  top-1 minus top-2 logit); ``generate_agrees`` says whether ``model.generate`` (greedy) gives
  the same ids.

Model: float32, CPU, ``attn_implementation="eager"``, ``torch.set_num_threads(2)``.
Tokenizer: ``PreTrainedTokenizerFast(tokenizer_file=DIR/tokenizer.json)`` (not AutoTokenizer:
transformers 5 may replace the pre-tokenizer).

Rounding (as in the shared reference): logits and margins 5 decimals, log-probabilities 6,
``last_logits_sum``/``last_logits_l2`` 4; log-probabilities, sum and L2 are computed in float64
from the float32 logits.

Environment (not part of the repository):

    python3 -m venv VENV && VENV/bin/pip install torch==2.15.0 transformers==5.24.0 \
        gguf==0.19.0 accelerate==1.15.0 safetensors tokenizers numpy

Usage:

    VENV/bin/python tools/gen_reference.py --model models/smollm2-135m-instruct \
        --prompts /work/shared/reference/prompts_public.json --out /tmp/ref_regen.json \
        [--new-tokens 32] [--model-label TEXT] [--gguf-sha256 HEX]

Compare two such files with ``tools/compare_reference.py A.json B.json``.
"""

import argparse
import json
import os
import platform
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

THREADS = 2


def r(x, nd):
    return round(float(x), nd)


def load_tokenizer(model_dir):
    tok_file = os.path.join(model_dir, "tokenizer.json")
    tok = PreTrainedTokenizerFast(tokenizer_file=tok_file)
    tmpl = None
    cfg_path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            tmpl = json.load(f).get("chat_template")
    if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t["name"]: t["template"] for t in tmpl}
        tmpl = named.get("default", next(iter(named.values())))
    if tmpl is None:
        jinja = os.path.join(model_dir, "chat_template.jinja")
        if os.path.exists(jinja):
            with open(jinja) as f:
                tmpl = f.read()
    if tmpl is None:
        raise SystemExit(f"no chat_template in {cfg_path} (or chat_template.jinja)")
    return tok, tmpl


def encode(tok, text):
    # add_special_tokens=False: no BOS/EOS from any post-processor; added (special) tokens such
    # as <|im_start|> in the text are still matched as single tokens.
    return tok(text, add_special_tokens=False)["input_ids"]


def top2(logits):
    v, _ = torch.topk(logits, 2)
    return float(v[0]), float(v[1])


def run_form(model, tok, ids, n_new, eos_id):
    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=input_ids, use_cache=True)
        last = out.logits[0, -1].float()
        cache = out.cache

        # log-probabilities in float64 from the float32 logits (as the shared reference does;
        # a float32 log_softmax over a 49k vocabulary is off by ~1e-5)
        logprobs = torch.log_softmax(last.double(), dim=-1)
        vals, idx = torch.topk(last, 5)
        top5 = [
            {"id": int(i), "logit": r(v, 5), "logprob": r(logprobs[i], 6)}
            for v, i in zip(vals.tolist(), idx.tolist())
        ]
        last64 = last.double()
        res = {
            "n_prompt_tokens": len(ids),
            "prompt_ids": list(ids),
            "top5_last": top5,
            "last_logits_sum": r(last64.sum(), 4),
            "last_logits_l2": r(last64.norm(), 4),
        }

        greedy, top1s, margins = [], [], []
        step_logits = last
        for step in range(n_new):
            nxt = int(step_logits.argmax())
            a, b = top2(step_logits)
            greedy.append(nxt)
            top1s.append(r(a, 5))
            margins.append(r(a - b, 5))
            if step + 1 == n_new:
                break
            out = model(input_ids=torch.tensor([[nxt]]), cache=cache, use_cache=True)
            cache = out.cache
            step_logits = out.logits[0, -1].float()

        gen = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            eos_token_id=None,
            pad_token_id=eos_id if eos_id is not None else 0,
            use_cache=True,
        )[0, len(ids):].tolist()

    res["greedy_ids"] = greedy
    res["greedy_text"] = tok.decode(
        greedy, skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    res["greedy_top1_logit"] = top1s
    res["greedy_margin"] = margins
    res["min_greedy_margin"] = min(margins) if margins else None
    res["first_eos_index"] = greedy.index(eos_id) if eos_id in greedy else None
    res["generate_agrees"] = gen == greedy
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face model directory")
    ap.add_argument("--prompts", required=True, help="JSON list of {id, kind, text}")
    ap.add_argument("--out", required=True)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--model-label", default=None, help="meta.model (default: directory name)")
    ap.add_argument("--gguf-sha256", default=None, help="meta.gguf_sha256 (default: sha256 from DIR/.tessera-pull.json if present)")
    args = ap.parse_args()

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)

    with open(args.prompts) as f:
        prompts = json.load(f)
    tok, chat_template = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert next(model.parameters()).dtype == torch.float32

    eos = model.config.eos_token_id
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None

    meta = {"model": args.model_label or os.path.basename(os.path.normpath(args.model))}
    gguf_sha256 = args.gguf_sha256
    pull_manifest = os.path.join(args.model, ".tessera-pull.json")  # written by `tessera pull`
    if gguf_sha256 is None and os.path.exists(pull_manifest):
        with open(pull_manifest) as f:
            gguf_sha256 = json.load(f).get("sha256")
    if gguf_sha256:
        meta["gguf_sha256"] = gguf_sha256
    meta.update(
        {
            "source": {
                "model": f"Hugging Face directory {os.path.normpath(args.model)}",
                "tokenizer": "PreTrainedTokenizerFast(tokenizer_file=tokenizer.json)",
            },
            "dtype": "float32",
            "attn_implementation": "eager",
            "threads": THREADS,
            "decoding": f"greedy argmax, KV cache, {args.new_tokens} new tokens, no EOS stop",
            "eos_token_id": eos,
            "bos_added": False,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "prompts_file": os.path.basename(args.prompts),
        }
    )

    results = []
    for p in prompts:
        messages = [{"role": "user", "content": p["text"]}]
        rendered = tok.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
        entry = {
            "id": p["id"],
            "kind": p.get("kind"),
            "text": p["text"],
            "messages": messages,
            "chat_rendered": rendered,
        }
        for form, text in (("plain", p["text"]), ("chat", rendered)):
            entry[form] = run_form(model, tok, encode(tok, text), args.new_tokens, eos)
        print(
            f"{p['id']}: plain {entry['plain']['n_prompt_tokens']} tok, "
            f"chat {entry['chat']['n_prompt_tokens']} tok, "
            f"generate_agrees {entry['plain']['generate_agrees']}/{entry['chat']['generate_agrees']}",
            file=sys.stderr,
        )
        results.append(entry)

    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
