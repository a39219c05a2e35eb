"""Hugging Face transformers peer for the throughput benchmark: batched greedy generate.

N requests with distinct pseudo-random prompts of I tokens each, generating O tokens each
(end-of-sequence ignored), as one batch of N through `model.generate` (float32, CPU).
Prints one JSON line with output tokens/s and total (prompt + output) tokens/s over the
whole wall time.

Usage: VENV/bin/python tools/peers/bench_transformers_batch.py --model models/smollm2-135m-instruct
"""

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[((r * 1_000_003 + i * 2654435761 + 12345) % (vocab - 100)) + 100
                         for i in range(a.input_len)] for r in range(a.requests)])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        t = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.output_len,
                             min_new_tokens=a.output_len, do_sample=False, pad_token_id=0)
        wall = time.perf_counter() - t
    generated = (out.shape[1] - a.input_len) * a.requests
    print(json.dumps({
        "engine": "transformers", "requests": a.requests, "input_len": a.input_len,
        "output_len": a.output_len, "wall_s": wall, "output_tok_s": generated / wall,
        "total_tok_s": (generated + a.requests * a.input_len) / wall,
    }))


if __name__ == "__main__":
    main()
