#!/usr/bin/env python3
"""Checks a running `tessera serve` with the official `openai` Python client.

Run by tests/server_openai.rs against the default model:

    python3 tests/openai_client/test_openai.py --base-url http://127.0.0.1:PORT/v1 \
        --model smollm2-135m-instruct --model-dir models/smollm2-135m-instruct \
        --reference ../shared/reference/reference_public.json

Greedy outputs are compared with the Hugging Face transformers reference (32 greedy ids
per prompt, cut at the first end-of-sequence id, since the server stops there), decoded
with the model's own tokenizer.json through the `tokenizers` package. Token counts are
compared with what the response itself carries (one logprobs entry per generated token):
the server exposes nothing beyond the OpenAI API.

Both packages are required: a missing one is an error, never a skip. Prints one line per
check and a closing `N passed, M failed`; exits 1 if any check failed.
"""

import argparse
import json
import os
import sys
import traceback

import openai  # noqa: E402  (required: `python3 -m pip install openai`)
from tokenizers import Tokenizer  # required: `python3 -m pip install tokenizers`

MAX_TOKENS = 32


class Ctx:
    """What every check needs: the client, the tokenizer, the reference."""

    def __init__(self, args):
        self.client = openai.OpenAI(
            base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=300
        )
        self.model = args.model
        self.tok = Tokenizer.from_file(os.path.join(args.model_dir, "tokenizer.json"))
        self.eos = eos_ids(args.model_dir)
        with open(args.reference) as f:
            self.reference = json.load(f)["results"]

    def expected(self, greedy_ids):
        """Reference ids up to the first end-of-sequence id, and the finish reason."""
        ids = list(greedy_ids[:MAX_TOKENS])
        for i, t in enumerate(ids):
            if t in self.eos:
                return ids[:i], "stop"
        return ids, "length"

    def decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False)

    def chat(self, messages, **kw):
        return self.client.chat.completions.create(model=self.model, messages=messages, **kw)

    def complete(self, prompt, **kw):
        return self.client.completions.create(model=self.model, prompt=prompt, **kw)


def eos_ids(model_dir):
    ids = set()
    for name in ("config.json", "generation_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                e = json.load(f).get("eos_token_id")
            ids.update(e if isinstance(e, list) else [] if e is None else [e])
    return ids


def eq(got, want, what):
    assert got == want, f"{what}: got {got!r}, want {want!r}"


# ---------------------------------------------------------------------------- checks


def check_models_list_only_the_served_model(c):
    ids = [m.id for m in c.client.models.list().data]
    eq(ids, [c.model], "model ids")


def check_chat_greedy_equals_reference_for_every_prompt(c):
    for r in c.reference:
        ids, reason = c.expected(r["chat"]["greedy_ids"])
        resp = c.chat(r["messages"], temperature=0, max_tokens=MAX_TOKENS, logprobs=True, top_logprobs=1)
        choice = resp.choices[0]
        eq(resp.object, "chat.completion", "object")
        assert resp.id.startswith("chatcmpl-"), resp.id
        eq(choice.message.role, "assistant", "role")
        eq(choice.message.content, c.decode(ids), f"{r['id']} text")
        eq(choice.finish_reason, reason, f"{r['id']} finish_reason")
        eq(resp.usage.prompt_tokens, len(r["chat"]["prompt_ids"]), f"{r['id']} prompt_tokens (chat template)")
        eq(resp.usage.completion_tokens, len(ids), f"{r['id']} completion_tokens")
        eq(resp.usage.total_tokens, len(ids) + len(r["chat"]["prompt_ids"]), f"{r['id']} total_tokens")
        content = choice.logprobs.content
        eq(len(content), resp.usage.completion_tokens, f"{r['id']} logprobs entries")
        eq([e.token for e in content], [c.decode([i]) for i in ids], f"{r['id']} token texts")
        for e in content:
            eq(e.bytes, list(e.token.encode()), "bytes")
            assert e.logprob <= 0, e.logprob
            eq(len(e.top_logprobs), 1, "top_logprobs length")
            eq(e.top_logprobs[0].token, e.token, "greedy token is the top one")


def check_completions_greedy_equals_reference_for_every_prompt(c):
    for r in c.reference:
        ids, reason = c.expected(r["plain"]["greedy_ids"])
        resp = c.complete(r["text"], temperature=0, max_tokens=MAX_TOKENS, logprobs=2)
        choice = resp.choices[0]
        eq(resp.object, "text_completion", "object")
        assert resp.id.startswith("cmpl-"), resp.id
        eq(choice.text, c.decode(ids), f"{r['id']} text")
        eq(choice.finish_reason, reason, f"{r['id']} finish_reason")
        n_prompt = len(c.tok.encode(r["text"], add_special_tokens=False).ids)
        eq(resp.usage.prompt_tokens, n_prompt, f"{r['id']} prompt_tokens")
        eq(n_prompt, len(r["plain"]["prompt_ids"]), "tokenizer vs reference")
        lp = choice.logprobs
        eq(len(lp.tokens), resp.usage.completion_tokens, f"{r['id']} logprobs tokens")
        eq(lp.tokens, [c.decode([i]) for i in ids], f"{r['id']} token texts")
        eq(len(lp.token_logprobs), len(lp.tokens), "token_logprobs length")
        eq(len(lp.text_offset), len(lp.tokens), "text_offset length")
        assert all(1 <= len(t) <= 2 for t in lp.top_logprobs), lp.top_logprobs
        assert lp.text_offset == sorted(lp.text_offset), lp.text_offset


def check_chat_stream_equals_whole_response(c):
    msgs = c.reference[0]["messages"]
    whole = c.chat(msgs, temperature=0, max_tokens=MAX_TOKENS)
    chunks = list(c.chat(msgs, temperature=0, max_tokens=MAX_TOKENS, stream=True,
                         stream_options={"include_usage": True}))
    eq(chunks[0].choices[0].delta.role, "assistant", "first chunk role")
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    eq(text, whole.choices[0].message.content, "streamed text")
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    eq(finishes, [whole.choices[0].finish_reason], "finish reasons")
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    eq(len({ch.id for ch in chunks}), 1, "one id per stream")
    eq(chunks[-1].choices, [], "usage chunk has no choices")
    eq(chunks[-1].usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
       whole.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}), "stream usage")


def check_chat_stream_logprobs_count_equals_usage(c):
    chunks = list(c.chat([{"role": "user", "content": "Count to ten."}], temperature=0.7, seed=3,
                         max_tokens=20, logprobs=True, stream=True, stream_options={"include_usage": True}))
    entries = sum(len(ch.choices[0].logprobs.content) for ch in chunks
                  if ch.choices and ch.choices[0].logprobs)
    eq(entries, chunks[-1].usage.completion_tokens, "logprobs entries vs usage")


def check_completions_stream_echo_and_token_prompts(c):
    r = c.reference[1]
    whole = c.complete(r["text"], temperature=0, max_tokens=16)
    text = "".join(ch.choices[0].text for ch in c.complete(r["text"], temperature=0, max_tokens=16, stream=True) if ch.choices)
    eq(text, whole.choices[0].text, "streamed completion")
    echoed = c.complete(r["text"], temperature=0, max_tokens=16, echo=True)
    eq(echoed.choices[0].text, r["text"] + whole.choices[0].text, "echo")
    by_ids = c.complete(r["plain"]["prompt_ids"], temperature=0, max_tokens=16)
    eq(by_ids.choices[0].text, whole.choices[0].text, "token-id prompt")
    eq(by_ids.usage.prompt_tokens, len(r["plain"]["prompt_ids"]), "token-id prompt_tokens")


def check_completions_batch_of_prompts_gives_one_choice_each(c):
    texts = [c.reference[0]["text"], c.reference[2]["text"]]
    batch = c.complete(texts, temperature=0, max_tokens=12)
    eq([ch.index for ch in batch.choices], [0, 1], "indices")
    singles = [c.complete(t, temperature=0, max_tokens=12) for t in texts]
    eq([ch.text for ch in batch.choices], [s.choices[0].text for s in singles], "batch texts")
    eq(batch.usage.completion_tokens, sum(s.usage.completion_tokens for s in singles), "batch usage")
    eq(batch.usage.prompt_tokens, sum(s.usage.prompt_tokens for s in singles), "batch prompt usage")


def check_n_two_gives_two_choices_and_summed_usage(c):
    resp = c.chat([{"role": "user", "content": "Name a color."}], n=2, temperature=0.8, seed=11,
                  max_tokens=12, logprobs=True)
    eq([ch.index for ch in resp.choices], [0, 1], "choice indices")
    eq(resp.usage.completion_tokens, sum(len(ch.logprobs.content) for ch in resp.choices), "usage")
    chunks = list(c.chat([{"role": "user", "content": "Name a color."}], n=2, temperature=0.8, seed=11,
                         max_tokens=12, stream=True))
    for i in range(2):
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks
                       if ch.choices and ch.choices[0].index == i)
        eq(text, resp.choices[i].message.content, f"streamed choice {i}")


def check_seed_reproduces_sampled_text(c):
    msgs = [{"role": "user", "content": "Write a sentence about the sea."}]
    a = c.chat(msgs, temperature=0.8, seed=1234, max_tokens=24).choices[0].message.content
    b = c.chat(msgs, temperature=0.8, seed=1234, max_tokens=24).choices[0].message.content
    eq(a, b, "same seed, same text")
    p = c.complete("Once upon a time", temperature=0.8, seed=99, max_tokens=24).choices[0].text
    q = c.complete("Once upon a time", temperature=0.8, seed=99, max_tokens=24).choices[0].text
    eq(p, q, "same seed, same completion")


def check_stop_strings_cut_the_text(c):
    msgs = c.reference[1]["messages"]
    full = c.chat(msgs, temperature=0, max_tokens=MAX_TOKENS).choices[0].message.content
    words = full.split()
    stop = " " + words[len(words) // 2]
    want = full[: full.index(stop)]
    for stops in (stop, [stop, "\u2603never"]):
        resp = c.chat(msgs, temperature=0, max_tokens=MAX_TOKENS, stop=stops)
        eq(resp.choices[0].message.content, want, f"stop {stops!r}")
        eq(resp.choices[0].finish_reason, "stop", "finish_reason")
    streamed = "".join(ch.choices[0].delta.content or "" for ch in
                       c.chat(msgs, temperature=0, max_tokens=MAX_TOKENS, stop=stop, stream=True) if ch.choices)
    eq(streamed, want, "streamed stop")
    text = c.complete("The capital of France is", temperature=0, max_tokens=MAX_TOKENS, stop=["."])
    assert "." not in text.choices[0].text, text.choices[0].text
    eq(text.choices[0].finish_reason, "stop", "completion stop")


def check_top_logprobs_are_sorted_and_include_the_greedy_token(c):
    resp = c.chat([{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=8,
                  logprobs=True, top_logprobs=3)
    for e in resp.choices[0].logprobs.content:
        lps = [t.logprob for t in e.top_logprobs]
        eq(len(lps), 3, "top count")
        eq(lps, sorted(lps, reverse=True), "sorted")
        eq(e.top_logprobs[0].logprob, e.logprob, "greedy = top")


def check_errors_surface_as_openai_exceptions(c):
    try:
        c.client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        eq(e.status_code, 404, "status")
    try:
        c.chat([{"role": "user", "content": "x"}], temperature=-1)
        raise AssertionError("negative temperature accepted")
    except openai.BadRequestError as e:
        body = e.body if isinstance(e.body, dict) else {}
        eq(body.get("error", body).get("param"), "temperature", "param")


CHECKS = [v for k, v in sorted(globals().items()) if k.startswith("check_")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--api-key", default="unused")
    ap.add_argument("-k", default="", help="run only checks whose name contains this")
    args = ap.parse_args()
    ctx = Ctx(args)
    passed = failed = 0
    for check in CHECKS:
        if args.k not in check.__name__:
            continue
        try:
            check(ctx)
            passed += 1
            print(f"PASS {check.__name__}", flush=True)
        except Exception:  # noqa: BLE001  (report every failure, then fail)
            failed += 1
            print(f"FAIL {check.__name__}\n{traceback.format_exc()}", flush=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
