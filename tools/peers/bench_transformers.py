"""Hugging Face transformers peer: prefill tokens/s and batch-1 decode tokens/s (float32, CPU).

Same workload as `tessera bench latency`: a fixed pseudo-random prompt of P tokens
(prefill), and D tokens decoded greedily one at a time with a KV cache after an 8-token
prompt. Medians over R repeats; prints one JSON line.

Environment (outside the repo): python3 -m venv VENV && VENV/bin/pip install torch==2.15.0
transformers==5.24.0 safetensors numpy
Usage: VENV/bin/python tools/peers/bench_transformers.py --model models/smollm2-135m-instruct
"""

import argparse
import json
import statistics
import time

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([[(i * 2654435761 + 12345) % vocab for i in range(a.prompt_tokens)]])
    prefill, decode = [], []
    with torch.inference_mode():
        model(prompt[:, :16])  # warm-up
        for _ in range(a.repeats):
            t = time.perf_counter()
            model(prompt)
            prefill.append(a.prompt_tokens / (time.perf_counter() - t))
            out = model(prompt[:, :8], use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(a.decode_tokens):
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
            decode.append(a.decode_tokens / (time.perf_counter() - t))
    print(json.dumps({
        "engine": "transformers",
        "torch": torch.__version__,
        "prefill_tok_s_median": statistics.median(prefill),
        "decode_tok_s_median": statistics.median(decode),
        "prefill_tok_s_all": prefill,
        "decode_tok_s_all": decode,
    }))


if __name__ == "__main__":
    main()
