#!/usr/bin/env python3
"""Generate tiny random-weight reference fixtures for Tessera's architecture coverage.

Builds three TINY Hugging Face models with random (seeded) float32 weights, saves each as a
Hugging Face directory under ``tests/fixtures/<name>/`` and records reference outputs computed
by Hugging Face transformers (float32, CPU, eager attention):

* ``tiny-mistral``  MistralForCausalLM, GQA 8q/2kv, head_dim 8, sliding_window 8, prompt 20 ids
                    (longer than the window, so the window changes the result; asserted).
* ``tiny-qwen2``    Qwen2ForCausalLM, 6q/2kv, hidden 48, random non-zero q/k/v biases,
                    untied lm_head.
* ``tiny-llama3``   LlamaForCausalLM, 5q/1kv, head_dim 16, rope_theta 500000, llama3 rope
                    scaling (asserted to change inv_freq), tied embeddings (no lm_head.weight
                    in the safetensors file), prompt 24 ids.

Each directory holds:

* ``config.json``: written by ``save_pretrained`` (transformers 5 style, ``rope_parameters``),
  plus the legacy Hugging Face hub keys ``rope_theta`` (and ``rope_scaling`` when scaling is
  used) with identical values, as real checkpoints on the hub carry them.
* ``model.safetensors``: float32 weights (``save_pretrained(safe_serialization=True)``).
* ``reference.json``: ``{"model", "transformers", "torch", "input_ids", "logits", "greedy_ids"}``
  where ``logits[p]`` are all vocab logits at prompt position ``p`` (full forward pass over the
  prompt, no cache), and ``greedy_ids`` are 16 tokens of greedy (argmax) decoding with a KV
  cache starting from the prompt, not stopping at any EOS. Floats are the exact float32 values
  written as the shortest float64 repr, so parsing as f64 and casting to f32 is exact.

Sliding-window semantics (transformers' ``sliding_window_overlay``): query position ``q``
attends to key positions ``k`` with ``q - sliding_window < k <= q``, i.e. itself plus the
previous ``sliding_window - 1`` tokens.

After writing, each directory is reloaded with ``AutoModelForCausalLM`` and the logits are
checked to be bit-identical; greedy ids are also checked against a no-cache recomputation and
against ``model.generate``.

Environment (not part of the repository):

    python3 -m venv VENV && VENV/bin/pip install torch==2.15.0 transformers==5.24.0 \
        gguf==0.19.0 accelerate==1.15.0 safetensors tokenizers numpy

Usage:

    VENV/bin/python tools/gen_fixtures.py [--out tests/fixtures] [--only tiny-qwen2 ...]
"""

import argparse
import json
import math
import os
import sys

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

N_GREEDY = 16
WEIGHT_STD = 0.2
NORM_STD = 0.1

# name -> (seed, config class, model class, config kwargs, prompt length, rope_scaling or None)
LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

SPECS = {
    "tiny-mistral": dict(
        seed=1001,
        config_cls=MistralConfig,
        model_cls=MistralForCausalLM,
        prompt_len=20,
        rope_theta=10000.0,
        rope_scaling=None,
        kwargs=dict(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=97,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
            sliding_window=8,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "tiny-qwen2": dict(
        seed=2002,
        config_cls=Qwen2Config,
        model_cls=Qwen2ForCausalLM,
        prompt_len=20,
        rope_theta=1000000.0,
        rope_scaling=None,
        kwargs=dict(
            vocab_size=256,
            hidden_size=48,
            intermediate_size=100,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=128,
            rms_norm_eps=1e-6,
            use_sliding_window=False,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "tiny-llama3": dict(
        seed=3003,
        config_cls=LlamaConfig,
        model_cls=LlamaForCausalLM,
        prompt_len=24,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_SCALING,
        kwargs=dict(
            vocab_size=256,
            hidden_size=80,
            intermediate_size=120,
            num_hidden_layers=2,
            num_attention_heads=5,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=128,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
}


def make_config(spec):
    rope = {"rope_type": "default", "rope_theta": spec["rope_theta"]}
    if spec["rope_scaling"] is not None:
        rope = dict(spec["rope_scaling"], rope_theta=spec["rope_theta"])
    cfg = spec["config_cls"](rope_parameters=rope, **spec["kwargs"])
    cfg._attn_implementation = "eager"
    return cfg


def randomize(model, seed):
    """normal(0, WEIGHT_STD) for every parameter incl. biases; norm weights 1 + normal(0, NORM_STD)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                p.copy_(1.0 + NORM_STD * noise)
            else:
                p.copy_(WEIGHT_STD * noise)


def greedy_with_cache(model, input_ids, n):
    """Greedy argmax decoding with the KV cache; no EOS stop."""
    out = []
    with torch.no_grad():
        res = model(input_ids=input_ids, use_cache=True)
        past = res.cache
        nxt = int(res.logits[0, -1].argmax())
        out.append(nxt)
        for _ in range(n - 1):
            # transformers 5.24 names the KV cache argument/output `cache` (was past_key_values)
            res = model(input_ids=torch.tensor([[nxt]]), cache=past, use_cache=True)
            past = res.cache
            nxt = int(res.logits[0, -1].argmax())
            out.append(nxt)
    return out


def greedy_no_cache(model, input_ids, n):
    ids = input_ids.clone()
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def greedy_generate(model, input_ids, n):
    with torch.no_grad():
        gen = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            eos_token_id=None,
            pad_token_id=0,
            use_cache=True,
        )
    return gen[0, input_ids.shape[1]:].tolist()


def check_llama3_scaling(model, spec):
    cfg = model.config
    head_dim = cfg.head_dim
    base = spec["rope_theta"]
    plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    scaled = model.model.rotary_emb.inv_freq.detach().float().cpu()
    changed = ~torch.isclose(plain, scaled, rtol=1e-6, atol=0.0)
    assert changed.any(), "llama3 rope scaling did not change any inv_freq"
    print(f"  llama3 inv_freq plain : {[f'{x:.6g}' for x in plain.tolist()]}")
    print(f"  llama3 inv_freq scaled: {[f'{x:.6g}' for x in scaled.tolist()]}")
    print(f"  llama3 scaling changes {int(changed.sum())}/{changed.numel()} inv_freq values")


def check_window_matters(model, input_ids, window):
    """Logits must equal the no-window model for positions < window and differ after."""
    with torch.no_grad():
        with_w = model(input_ids=input_ids, use_cache=False).logits[0]
        saved = model.config.sliding_window
        model.config.sliding_window = None
        try:
            without_w = model(input_ids=input_ids, use_cache=False).logits[0]
        finally:
            model.config.sliding_window = saved
    same_early = torch.allclose(with_w[:window], without_w[:window], atol=1e-5, rtol=0)
    differs_late = not torch.allclose(with_w[window:], without_w[window:], atol=1e-3, rtol=0)
    assert same_early, "sliding window changed logits inside the window"
    assert differs_late, "sliding window does not matter for this prompt"
    max_diff = float((with_w[window:] - without_w[window:]).abs().max())
    print(f"  sliding window matters: max |dlogit| after position {window} = {max_diff:.4f}")


def add_legacy_rope_keys(path, spec):
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["rope_theta"] = spec["rope_theta"]
    if spec["rope_scaling"] is not None:
        cfg["rope_scaling"] = dict(spec["rope_scaling"])
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def build(name, spec, out_root):
    print(f"== {name}")
    torch.manual_seed(spec["seed"])
    cfg = make_config(spec)
    model = spec["model_cls"](cfg).to(torch.float32).eval()
    randomize(model, spec["seed"])
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    g = torch.Generator().manual_seed(spec["seed"] + 7)
    # ids 3.. avoid the (unused) bos/eos ids in the prompt
    input_ids = torch.randint(3, cfg.vocab_size, (1, spec["prompt_len"]), generator=g)

    if spec["rope_scaling"] is not None:
        check_llama3_scaling(model, spec)
    if getattr(cfg, "sliding_window", None):
        check_window_matters(model, input_ids, cfg.sliding_window)
    if name == "tiny-qwen2":
        attn = model.model.layers[0].self_attn
        for proj in ("q_proj", "k_proj", "v_proj"):
            b = getattr(attn, proj).bias
            assert b is not None and float(b.detach().abs().min()) > 0, f"{proj} bias missing or zero"
        assert attn.o_proj.bias is None

    with torch.no_grad():
        logits = model(input_ids=input_ids, use_cache=False).logits[0].float()
    std = float(logits.std())
    print(f"  logits shape {tuple(logits.shape)} std {std:.3f}")
    assert std > 0.8, f"logits too small (std {std})"

    greedy = greedy_with_cache(model, input_ids, N_GREEDY)
    assert greedy == greedy_no_cache(model, input_ids, N_GREEDY), "cache/no-cache greedy differ"
    gen = greedy_generate(model, input_ids, N_GREEDY)
    assert greedy == gen, f"generate differs: {greedy} vs {gen}"

    path = os.path.join(out_root, name)
    os.makedirs(path, exist_ok=True)
    for stale in ("model.safetensors", "config.json", "generation_config.json", "reference.json"):
        if os.path.exists(os.path.join(path, stale)):
            os.remove(os.path.join(path, stale))
    model.save_pretrained(path, safe_serialization=True)
    gen_cfg = os.path.join(path, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)  # not needed; keep the fixture minimal
    add_legacy_rope_keys(path, spec)

    ref = {
        "model": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "input_ids": input_ids[0].tolist(),
        "logits": [[float(x) for x in row] for row in logits.tolist()],
        "greedy_ids": greedy,
    }
    with open(os.path.join(path, "reference.json"), "w") as f:
        json.dump(ref, f)
        f.write("\n")

    # Verify: reload from disk and compare bit-for-bit.
    reloaded = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    assert type(reloaded) is type(model), type(reloaded)
    with torch.no_grad():
        logits2 = reloaded(input_ids=input_ids, use_cache=False).logits[0].float()
    assert torch.equal(logits, logits2), "reloaded logits differ"
    assert greedy_with_cache(reloaded, input_ids, N_GREEDY) == greedy
    with open(os.path.join(path, "reference.json")) as f:
        back = json.load(f)
    assert torch.equal(torch.tensor(back["logits"], dtype=torch.float32), logits)

    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), "pt") as st:
        keys = list(st.keys())
        for k in keys:
            assert st.get_slice(k).get_dtype() == "F32", k
    if cfg.tie_word_embeddings:
        assert "lm_head.weight" not in keys
    print(f"  greedy {greedy}")
    print(f"  tensors: {len(keys)}, params: {sum(p.numel() for p in model.parameters())}")
    for fn in sorted(os.listdir(path)):
        print(f"  {fn:20s} {os.path.getsize(os.path.join(path, fn)):>9d} bytes")
    st_size = os.path.getsize(os.path.join(path, "model.safetensors"))
    assert st_size < 1_000_000, st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", choices=sorted(SPECS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in args.only or list(SPECS):
        build(name, SPECS[name], os.path.normpath(args.out))
    print("ok")


if __name__ == "__main__":
    sys.exit(main())
