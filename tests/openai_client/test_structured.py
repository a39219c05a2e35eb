#!/usr/bin/env python3
"""Structured output, tool calling and request refusals of `tessera serve`, through the
official `openai` Python client (and raw HTTP where the client would hide the wire shape).

Run by tests/server_structured.rs against the default model:

    python3 tests/openai_client/test_structured.py --base-url http://127.0.0.1:PORT/v1 \
        --model smollm2-135m-instruct

Every JSON output is parsed and validated here against the schema that was sent (a small
validator below, so that no extra package is needed). Schemas vary on purpose: nested
objects, arrays with bounds, enums, numbers with ranges, optional fields. Requires
`openai` and `pydantic`; a missing one is an error, never a skip. Prints one line per
check and `N passed, M failed`; exits 1 if any check failed.
"""

import argparse
import enum
import json
import re
import sys
import traceback
import urllib.error
import urllib.request
from typing import List, Optional

import openai
from pydantic import BaseModel, Field

# ------------------------------------------------------------------ a small validator


def validate(value, schema, path="$"):
    """Raises AssertionError unless `value` is valid under `schema` (the subset used here)."""
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != {schema['const']!r}"
    if "anyOf" in schema:
        errors = []
        for alt in schema["anyOf"]:
            try:
                return validate(value, alt, path)
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{path}: no anyOf alternative matches: {errors}")
    if "$ref" in schema:
        raise AssertionError("resolve $ref before validating")
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if t == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: not an integer: {value!r}"
    elif t == "number":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: not a number"
    elif t is not None:
        assert isinstance(value, types[t]), f"{path}: not {t}: {value!r}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        assert value >= schema.get("minimum", value), f"{path}: {value} < minimum"
        assert value <= schema.get("maximum", value), f"{path}: {value} > maximum"
    if isinstance(value, str):
        assert len(value) <= schema.get("maxLength", len(value)), f"{path}: too long"
        assert len(value) >= schema.get("minLength", 0), f"{path}: too short"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{path}: {value!r} !~ {schema['pattern']}"
    if isinstance(value, list):
        assert len(value) >= schema.get("minItems", 0), f"{path}: too few items"
        assert len(value) <= schema.get("maxItems", len(value)), f"{path}: too many items"
        for i, item in enumerate(value):
            validate(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            assert k in value, f"{path}: missing {k}"
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(props)
            assert not extra, f"{path}: extra keys {extra}"
        for k, v in value.items():
            if k in props:
                validate(v, props[k], f"{path}.{k}")


def resolve_refs(schema, root=None):
    """`schema` with local `#/$defs/...` references inlined (pydantic emits them)."""
    root = root or schema
    if isinstance(schema, dict):
        if "$ref" in schema:
            name = schema["$ref"].split("/")[-1]
            return resolve_refs(root["$defs"][name], root)
        return {k: resolve_refs(v, root) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [resolve_refs(v, root) for v in schema]
    return schema


# ------------------------------------------------------------------------- context


class Ctx:
    def __init__(self, args):
        self.client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=600)
        self.model = args.model
        self.base_url = args.base_url

    def chat(self, messages, **kw):
        return self.client.chat.completions.create(model=self.model, messages=messages, **kw)

    def post(self, path, body):
        """(status, JSON body) of a raw POST."""
        req = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(dict({"model": self.model}, **body)).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)


def user(text):
    return [{"role": "user", "content": text}]


def eq(got, want, what):
    assert got == want, f"{what}: got {got!r}, want {want!r}"


def json_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# ------------------------------------------------------------------- structured output


class Color(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    city: str = Field(max_length=24)
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    favourite: Color
    address: Address
    languages: List[str] = Field(max_length=3)
    nickname: Optional[str] = None


def check_parse_with_a_pydantic_model(c):
    # Seeded: `languages` items are strings of unbounded length, so an unseeded run at
    # temperature 1 may spend all 300 tokens inside one (about 1 in 5 did) and then
    # parse() rightly raises LengthFinishReasonError.
    for temperature in (0, 1):
        resp = c.client.chat.completions.parse(
            model=c.model,
            messages=user("Invent a person who lives in a city, as JSON."),
            response_format=Person,
            temperature=temperature,
            max_tokens=300,
            seed=2,
        )
        msg = resp.choices[0].message
        eq(resp.choices[0].finish_reason, "stop", "finish_reason")
        assert isinstance(msg.parsed, Person), msg
        validate(json.loads(msg.content), resolve_refs(Person.model_json_schema()))


INVENTORY = {
    "type": "object",
    "properties": {
        "store": {"type": "string", "maxLength": 20},
        "open": {"type": "boolean"},
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                    "kind": {"enum": ["tool", "food", "toy"]},
                    "price": {"type": "number", "minimum": 0, "maximum": 1000},
                    "tags": {"type": "array", "items": {"enum": ["new", "sale"]}, "maxItems": 2},
                },
                "required": ["sku", "kind", "price", "tags"],
                "additionalProperties": False,
            },
        },
        "manager": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 16}, "level": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["name", "level"],
            "additionalProperties": False,
        },
    },
    "required": ["store", "open", "items", "manager"],
    "additionalProperties": False,
}


def check_nested_schema_with_n_choices_at_temperature_one(c):
    resp = c.chat(user("Describe a small shop's inventory as JSON."), n=3, temperature=1, seed=5,
                  max_tokens=400, response_format=json_format("inventory", INVENTORY))
    eq(len(resp.choices), 3, "choices")
    texts = set()
    for ch in resp.choices:
        eq(ch.finish_reason, "stop", "finish_reason")
        validate(json.loads(ch.message.content), INVENTORY)
        texts.add(ch.message.content)
    assert len(texts) > 1, "n=3 at temperature 1 gave identical choices"


def check_streamed_schema_output_validates(c):
    schema = {"type": "object",
              "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                             "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
                             "reasons": {"type": "array", "items": {"type": "string", "maxLength": 30}, "minItems": 1, "maxItems": 2}},
              "required": ["answer", "confidence", "reasons"], "additionalProperties": False}
    # Seeded: a number's digits are unbounded in JSON, so an unseeded sampled run may
    # (rarely) spend max_tokens on them.
    stream = c.chat(user("Is the sky blue? Answer as JSON."), stream=True, n=2, temperature=1, seed=11,
                    max_tokens=200, response_format=json_format("answer", schema))
    parts, reasons = {}, {}
    for chunk in stream:
        for ch in chunk.choices:
            parts[ch.index] = parts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                reasons[ch.index] = ch.finish_reason
    eq(sorted(parts), [0, 1], "streamed choices")
    for i, text in parts.items():
        eq(reasons[i], "stop", "finish_reason")
        validate(json.loads(text), schema)


def check_json_object_mode_gives_an_object(c):
    resp = c.chat(user("Describe one cat as a JSON object with a name and an age."), temperature=0, max_tokens=200,
                  response_format={"type": "json_object"})
    ch = resp.choices[0]
    eq(ch.finish_reason, "stop", "finish_reason")
    assert isinstance(json.loads(ch.message.content), dict), ch.message.content


def check_guided_extras_on_both_endpoints(c):
    r = c.chat(user("Pick a colour."), temperature=1, max_tokens=20,
               extra_body={"guided_choice": ["crimson", "teal", "ochre"]})
    assert r.choices[0].message.content in ("crimson", "teal", "ochre"), r.choices[0].message.content
    eq(r.choices[0].finish_reason, "stop", "choice finish")
    r = c.client.completions.create(model=c.model, prompt="My phone number is", temperature=1, max_tokens=30,
                                    extra_body={"guided_regex": r" \(\d{3}\) \d{3}-\d{4}"})
    assert re.fullmatch(r" \(\d{3}\) \d{3}-\d{4}", r.choices[0].text), r.choices[0].text
    eq(r.choices[0].finish_reason, "stop", "regex finish")
    schema = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "minItems": 2, "maxItems": 4}
    r = c.client.completions.create(model=c.model, prompt="Some small numbers:", temperature=1, max_tokens=40,
                                    extra_body={"guided_json": schema})
    validate(json.loads(r.choices[0].text), schema)
    lark = 'start: "The answer is " NUM " " UNIT\nNUM: /[0-9]{1,3}/\nUNIT: "km" | "miles"'
    r = c.chat(user("How far is it?"), temperature=1, max_tokens=30, extra_body={"guided_grammar": lark})
    assert re.fullmatch(r"The answer is [0-9]{1,3} (km|miles)", r.choices[0].message.content), r.choices[0].message.content


# ----------------------------------------------------------------------- tool calling

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object",
                   "properties": {"city": {"type": "string", "maxLength": 30},
                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
CONVERT = {"type": "function", "function": {
    "name": "convert_currency", "description": "Convert an amount between currencies",
    "parameters": {"type": "object",
                   "properties": {"amount": {"type": "number", "minimum": 0, "maximum": 1000000},
                                  "from": {"enum": ["USD", "EUR", "JPY"]},
                                  "to": {"enum": ["USD", "EUR", "JPY"]}},
                   "required": ["amount", "from", "to"], "additionalProperties": False}}}
TOOLS = [WEATHER, CONVERT]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def check_calls(calls):
    assert calls, "no tool calls"
    ids = set()
    for call in calls:
        assert call.id.startswith("call_"), call.id
        ids.add(call.id)
        eq(call.type, "function", "type")
        assert call.function.name in SCHEMAS, call.function.name
        validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    eq(len(ids), len(calls), "distinct call ids")


def check_tool_round_trip_call_result_answer(c):
    msgs = user("What is the weather in Paris right now?")
    r = c.chat(msgs, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=200, parallel_tool_calls=False)
    ch = r.choices[0]
    eq(ch.finish_reason, "tool_calls", "finish_reason")
    eq(len(ch.message.tool_calls), 1, "one call without parallel_tool_calls")
    check_calls(ch.message.tool_calls)
    call = ch.message.tool_calls[0]
    msgs = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "sunny"})},
    ]
    # `none`: the reply must be the answer (this small model would happily call again).
    final = c.chat(msgs, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=60)
    ch = final.choices[0]
    assert ch.message.tool_calls is None, ch.message.tool_calls
    assert ch.message.content and "<tool_call>" not in ch.message.content, ch.message.content
    assert ch.finish_reason in ("stop", "length"), ch.finish_reason


def check_named_tool_choice_and_n_choices_at_temperature_one(c):
    named = {"type": "function", "function": {"name": "convert_currency"}}
    r = c.chat(user("How many yen is 20 dollars?"), tools=TOOLS, tool_choice=named, n=3, temperature=1,
               max_tokens=200, seed=4)  # seeded: a number's digits are unbounded in JSON
    for ch in r.choices:
        eq(ch.finish_reason, "tool_calls", "finish_reason")
        eq([t.function.name for t in ch.message.tool_calls], ["convert_currency"], "named function")
        check_calls(ch.message.tool_calls)
        eq(ch.message.content, None, "content with tool calls")


def check_streamed_tool_calls_assemble_like_a_client(c):
    stream = c.chat(user("Weather in Tokyo and Oslo, please."), tools=TOOLS, tool_choice="required",
                    temperature=0, max_tokens=300, stream=True)
    calls, finish = {}, None
    for chunk in stream:
        for ch in chunk.choices:
            for d in ch.delta.tool_calls or []:
                cur = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id:
                    assert cur["id"] is None, "id sent twice"
                    cur["id"] = d.id
                if d.function and d.function.name:
                    cur["name"] = d.function.name
                if d.function and d.function.arguments:
                    assert cur["id"] is not None, "arguments before the call's id"
                    cur["arguments"] += d.function.arguments
            if ch.finish_reason:
                finish = ch.finish_reason
    eq(finish, "tool_calls", "finish_reason")
    assert calls, "no tool call deltas"
    eq(sorted(calls), list(range(len(calls))), "indices")
    for call in calls.values():
        assert call["id"].startswith("call_"), call
        validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


def check_auto_tool_choice_gives_valid_calls_or_text(c):
    prompts = ["What is the weather in Rome?", "Tell me a joke.", "Convert 5 euros to dollars."]
    for p in prompts:
        r = c.chat(user(p), tools=TOOLS, temperature=1, seed=3, max_tokens=200, n=2)
        for ch in r.choices:
            if ch.message.tool_calls:
                eq(ch.finish_reason, "tool_calls", "finish_reason")
                check_calls(ch.message.tool_calls)
            else:
                assert ch.message.content and not ch.message.content.startswith("<"), ch.message.content


def check_tool_choice_none_answers_with_text(c):
    r = c.chat(user("Say hello."), tools=TOOLS, tool_choice="none", temperature=0, max_tokens=10)
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content


# --------------------------------------------------------------- defaults and refusals


def check_completions_default_to_16_tokens(c):
    r = c.client.completions.create(model=c.model, prompt="Once upon a time, in a land far away,", temperature=0)
    assert r.usage.completion_tokens <= 16, r.usage
    if r.choices[0].finish_reason == "length":
        eq(r.usage.completion_tokens, 16, "completion tokens at the default")


def check_unsupported_fields_are_refused_by_name(c):
    base = {"messages": user("hi"), "max_tokens": 2}
    cases = [
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": "nope"}}},
         "response_format.json_schema.schema"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]},
         "messages[0].content[0]"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"guided_regex": "(unclosed"}, "guided_regex"),
        ({"guided_json": {"type": "object"}, "guided_choice": ["a"]}, "guided_choice"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "code_interpreter", "function": {"name": "x"}}]}, "tools[0].type"),
    ]
    for extra, field in cases:
        status, body = c.post("/chat/completions", dict(base, **extra))
        eq(status, 400, f"status for {field}")
        eq(body["error"]["param"], field, "param")
        assert field.split(".")[0].split("[")[0] in body["error"]["message"] or field.startswith("messages"), body
    status, body = c.post("/completions", {"prompt": "x", "max_tokens": 2, "guided_grammar": "start: nope_rule"})
    eq((status, body["error"]["param"]), (400, "guided_grammar"), "bad grammar on completions")
    try:
        c.chat(user("hi"), max_tokens=2, response_format={"type": "xml"})
        raise AssertionError("unknown response_format accepted")
    except openai.BadRequestError as e:
        eq(e.status_code, 400, "status")


def check_harmless_fields_are_accepted(c):
    r = c.chat(user("hi"), max_tokens=2, user="u-1", metadata={"k": "v"}, store=False,
               modalities=["text"], service_tier="auto", response_format={"type": "text"})
    assert r.choices[0].message.content is not None


CHECKS = [v for k, v in sorted(globals().items()) if k.startswith("check_") and callable(v) and k != "check_calls"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
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
