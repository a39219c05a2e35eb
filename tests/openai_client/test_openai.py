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
import math
import os
import sys
import traceback
import urllib.request

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
        self.base_url = args.base_url
        self.api_key = args.api_key

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

    def raw_stream(self, path, body):
        """The JSON objects of an SSE response, as sent (the client would hide absent vs null)."""
        req = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(dict(body, model=self.model, stream=True)).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {self.api_key}"},
        )
        events = []
        with urllib.request.urlopen(req, timeout=300) as resp:
            for line in resp.read().decode().split("\n\n"):
                data = line.strip().removeprefix("data: ")
                if data and data != "[DONE]":
                    events.append(json.loads(data))
        return events

    def render(self, messages, add_generation_prompt=True):
        """SmolLM2's chat template, written out, to count the tokens a prompt must have."""
        text = ""
        if messages[0]["role"] != "system":
            text += "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        for m in messages:
            text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return text

    def ids(self, text):
        return self.tok.encode(text, add_special_tokens=False).ids


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


# ------------------------------------------------------------ prompt logprobs (echo)


def check_echo_logprobs_score_the_prompt_as_greedy_generation_reports_it(c):
    r = c.reference[0]
    prompt = list(r["plain"]["prompt_ids"])
    k = 8
    generated = list(r["plain"]["greedy_ids"][:k])
    assert not set(generated) & c.eos, "the reference ends too early for this check"
    gen = c.complete(prompt, temperature=0, max_tokens=k, logprobs=1)
    eq(gen.choices[0].text, c.decode(generated), "greedy continuation")
    glp = gen.choices[0].logprobs
    # Score prompt + continuation: position i's logprob comes from the logits at i - 1,
    # so the continuation's entries must be what greedy generation reported.
    full = prompt + generated
    scored = c.complete(full, temperature=0, max_tokens=0, echo=True, logprobs=1)
    choice = scored.choices[0]
    eq(choice.text, c.decode(full), "echoed text")
    eq(choice.finish_reason, "length", "finish_reason with max_tokens 0")
    eq((scored.usage.prompt_tokens, scored.usage.completion_tokens), (len(full), 0), "usage")
    lp = choice.logprobs
    eq(lp.tokens, [c.decode([i]) for i in full], "token texts")
    eq(len(lp.token_logprobs), len(full), "token_logprobs length")
    eq((lp.token_logprobs[0], lp.top_logprobs[0]), (None, None), "first token has no logprob")
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:]), lp.token_logprobs
    for j in range(k):
        pos = len(prompt) + j
        got = lp.token_logprobs[pos]
        assert abs(got - glp.token_logprobs[j]) < 1e-4, (j, got, glp.token_logprobs[j])
        (top_token, top_lp), = lp.top_logprobs[pos].items()
        eq(top_token, lp.tokens[pos], f"greedy token {j} is the top one at its position")
        assert abs(top_lp - got) < 1e-6, (top_lp, got)
    offsets = lp.text_offset
    eq(offsets[0], 0, "first offset")
    assert offsets == sorted(offsets), offsets
    # Five alternatives: a distribution's head, most likely first, led by the max logprob.
    five = c.complete(full, temperature=0, max_tokens=0, echo=True, logprobs=5).choices[0].logprobs
    for pos in range(1, len(full)):
        tops = list(five.top_logprobs[pos].values())
        eq(len(tops), 5, "five alternatives")
        eq(tops, sorted(tops, reverse=True), "sorted")
        assert sum(math.exp(x) for x in tops) <= 1 + 1e-4, tops
        assert five.token_logprobs[pos] <= tops[0] + 1e-6
        assert abs(five.token_logprobs[pos] - lp.token_logprobs[pos]) < 1e-6


def check_echo_logprobs_with_generation_and_streaming(c):
    prompt = list(c.reference[1]["plain"]["prompt_ids"])
    whole = c.complete(prompt, temperature=0, max_tokens=4, echo=True, logprobs=1,
                       extra_body={"ignore_eos": True})
    plain = c.complete(prompt, temperature=0, max_tokens=4, logprobs=1, extra_body={"ignore_eos": True})
    lp = whole.choices[0].logprobs
    eq(len(lp.tokens), len(prompt) + 4, "prompt + completion entries")
    eq(lp.tokens[len(prompt):], plain.choices[0].logprobs.tokens, "completion entries")
    eq(lp.token_logprobs[len(prompt):], plain.choices[0].logprobs.token_logprobs, "completion logprobs")
    echoed = c.decode(prompt)
    eq(whole.choices[0].text, echoed + plain.choices[0].text, "text")
    eq(lp.text_offset[len(prompt)], len(echoed), "first generated offset")
    events = c.raw_stream("/completions", {"prompt": prompt, "temperature": 0, "max_tokens": 4,
                                           "echo": True, "logprobs": 1, "ignore_eos": True})
    first = events[0]["choices"][0]
    eq(first["text"], echoed, "first chunk echoes the prompt")
    eq(first["logprobs"]["token_logprobs"], lp.token_logprobs[:len(prompt)], "streamed prompt logprobs")
    text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
    eq(text, whole.choices[0].text, "streamed text")
    empty = c.complete(prompt, temperature=0, max_tokens=0)
    eq((empty.choices[0].text, empty.choices[0].finish_reason), ("", "length"), "max_tokens 0 without echo")
    eq(empty.usage.completion_tokens, 0, "no tokens")


# ------------------------------------------------------------ sampling parameters


def check_top_k_one_and_min_p_near_one_sample_the_greedy_text(c):
    msgs = [{"role": "user", "content": "Write a short poem about rain."}]
    greedy = c.chat(msgs, temperature=0, max_tokens=24).choices[0].message.content
    seeds = (1, 2, 3)
    free = [c.chat(msgs, temperature=1.0, seed=s, max_tokens=24).choices[0].message.content for s in seeds]
    assert any(f != greedy for f in free), "temperature 1 gave the greedy text anyway: this check could not fail"
    for s in seeds:
        for extra in ({"top_k": 1}, {"min_p": 0.999}):
            got = c.chat(msgs, temperature=1.0, seed=s, max_tokens=24, extra_body=extra).choices[0].message.content
            eq(got, greedy, f"{extra} seed {s}")


def check_logit_bias_bans_and_forces_tokens(c):
    r = c.reference[0]
    first = r["plain"]["greedy_ids"][0]
    base = c.complete(r["text"], temperature=0, max_tokens=1).choices[0].text
    eq(base, c.decode([first]), "greedy first token")
    banned = c.complete(r["text"], temperature=0, max_tokens=1, logit_bias={str(first): -100}).choices[0].text
    assert banned != base, f"-100 on the greedy token left it first: {banned!r}"
    forced_id = c.ids(" banana")[0]
    assert forced_id != first
    for kw in ({"temperature": 0}, {"temperature": 1.0, "seed": 5}):
        forced = c.complete(r["text"], max_tokens=3, logit_bias={str(forced_id): 100}, **kw).choices[0].text
        eq(forced, c.decode([forced_id] * 3), f"+100 forces the token ({kw})")


def check_penalties_change_a_repetitive_greedy_output(c):
    prompt = "Hello! Hello! Hello! Hello!"
    eos = {"ignore_eos": True}

    def most_repeated(resp):
        toks = resp.choices[0].logprobs.tokens
        return max(toks.count(t) for t in set(toks))

    greedy = c.complete(prompt, temperature=0, max_tokens=24, logprobs=0, extra_body=eos)
    repeats = most_repeated(greedy)
    assert repeats >= 8, f"the greedy output is not repetitive: {greedy.choices[0].text!r}"
    for name, kw in [
        ("frequency_penalty", {"frequency_penalty": 2.0, "extra_body": eos}),
        ("presence_penalty", {"presence_penalty": 2.0, "extra_body": eos}),
        ("repetition_penalty", {"extra_body": dict(eos, repetition_penalty=2.0)}),
    ]:
        out = c.complete(prompt, temperature=0, max_tokens=24, logprobs=0, **kw)
        assert out.choices[0].text != greedy.choices[0].text, f"{name} changed nothing"
        assert most_repeated(out) < repeats, f"{name}: {out.choices[0].text!r}"


def check_max_completion_tokens_limits_the_length_and_wins_over_max_tokens(c):
    msgs = [{"role": "user", "content": "Tell me a long story about a dragon."}]

    def length(**kw):
        resp = c.chat(msgs, temperature=0, extra_body={"ignore_eos": True}, **kw)
        eq(resp.choices[0].finish_reason, "length", f"finish_reason {kw}")
        return resp.usage.completion_tokens

    eq(length(max_completion_tokens=5), 5, "max_completion_tokens alone")
    eq(length(max_tokens=7), 7, "max_tokens alone")
    eq(length(max_completion_tokens=5, max_tokens=9), 5, "max_completion_tokens wins (smaller)")
    eq(length(max_completion_tokens=9, max_tokens=5), 9, "max_completion_tokens wins (larger)")


def check_text_parts_render_like_a_string(c):
    text = "Name three fruits."
    forms = [text, [{"type": "text", "text": text}],
             [{"type": "text", "text": "Name three"}, {"type": "text", "text": " fruits."}]]
    resps = [c.chat([{"role": "user", "content": f}], temperature=0, max_tokens=12) for f in forms]
    want = len(c.ids(c.render([{"role": "user", "content": text}])))
    for f, r in zip(forms, resps):
        eq(r.usage.prompt_tokens, want, f"prompt tokens of {f!r}")
        eq(r.choices[0].message.content, resps[0].choices[0].message.content, f"text of {f!r}")


def check_system_and_developer_roles_reach_the_template(c):
    user = {"role": "user", "content": "Who are you?"}
    system = "You are a pirate named Jack."
    want = len(c.ids(c.render([{"role": "system", "content": system}, user])))
    default = len(c.ids(c.render([user])))
    assert want != default
    texts = []
    for role in ("system", "developer"):
        resp = c.chat([{"role": role, "content": system}, user], temperature=0, max_tokens=16)
        eq(resp.usage.prompt_tokens, want, f"{role} prompt tokens")
        texts.append(resp.choices[0].message.content)
    eq(texts[1], texts[0], "developer renders as system")
    eq(c.chat([user], temperature=0, max_tokens=1).usage.prompt_tokens, default, "default system prompt")
    history = [user, {"role": "assistant", "content": "A pirate."}, {"role": "user", "content": "Really?"}]
    eq(c.chat(history, temperature=0, max_tokens=1).usage.prompt_tokens, len(c.ids(c.render(history))),
       "assistant turns")


# ------------------------------------------------------------ streaming usage, templates


def check_stream_usage_is_null_in_every_chunk_but_the_last(c):
    bodies = [
        ("/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/completions", {"prompt": "Hello", "echo": True}),
    ]
    for path, body in bodies:
        body = dict(body, temperature=0, max_tokens=6, ignore_eos=True)
        events = c.raw_stream(path, dict(body, stream_options={"include_usage": True}))
        assert len(events) >= 4, events
        for e in events[:-1]:
            assert "usage" in e and e["usage"] is None, f"{path}: {e}"
        eq(events[-1]["choices"], [], f"{path} usage chunk choices")
        eq(events[-1]["usage"]["completion_tokens"], 6, f"{path} usage")
        events = c.raw_stream(path, body)
        assert all("usage" not in e for e in events), f"{path}: usage sent without include_usage"


def check_add_generation_prompt_and_continue_final_message_shape_the_prompt(c):
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    on = c.chat(msgs, temperature=0, max_tokens=4)
    eq(on.usage.prompt_tokens, len(c.ids(c.render(msgs))), "with the generation prompt")
    off = c.chat(msgs, temperature=0, max_tokens=4, extra_body={"add_generation_prompt": False})
    eq(off.usage.prompt_tokens, len(c.ids(c.render(msgs, add_generation_prompt=False))),
       "without the generation prompt")
    assert off.usage.prompt_tokens < on.usage.prompt_tokens
    start = "The capital of France is"
    cont = msgs + [{"role": "assistant", "content": start}]
    rendered = c.render(cont, add_generation_prompt=False)
    open_text = rendered[: rendered.rindex(start) + len(start)]
    resp = c.chat(cont, temperature=0, max_tokens=8,
                  extra_body={"continue_final_message": True, "add_generation_prompt": False})
    eq(resp.usage.prompt_tokens, len(c.ids(open_text)), "continued message prompt tokens")
    plain = c.complete(c.ids(open_text), temperature=0, max_tokens=8)
    eq(resp.choices[0].message.content, plain.choices[0].text, "continuation = raw completion")


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
