#!/usr/bin/env python3
"""Online serving benchmark for `tessera serve` (or any OpenAI-compatible server).

For each concurrency level, `--requests` streaming completions (random token-id prompts
of `--input-len` tokens, `--output-len` tokens each, end-of-sequence ignored) are sent
from that many concurrent clients; prints one JSON object with, per level, requests/s,
output tokens/s, and time-to-first-token and inter-token-latency percentiles (ms).

    python3 tools/bench_serve.py --url http://127.0.0.1:8000 --concurrency 1,4,16,64

Standard library only. Tokens are counted from each stream's usage chunk; the ITL is the
gap between consecutive streamed chunks (one token each, with logprobs requested).
"""

import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse


def percentiles(values):
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    v = sorted(values)

    def at(q):
        return round(v[min(len(v) - 1, int(round((len(v) - 1) * q)))] * 1e3, 3)

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "mean": round(sum(v) / len(v) * 1e3, 3)}


class Target:
    def __init__(self, url, api_key):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        if self.prefix.endswith("/v1"):
            self.prefix = self.prefix[:-3]
        self.headers = {"content-type": "application/json"}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"

    def conn(self):
        return http.client.HTTPConnection(self.host, self.port, timeout=600)

    def model(self):
        c = self.conn()
        c.request("GET", self.prefix + "/v1/models", headers=self.headers)
        r = c.getresponse()
        body = json.loads(r.read())
        if r.status != 200:
            sys.exit(f"GET /v1/models: {r.status} {body}")
        return body["data"][0]["id"]

    def stream(self, body):
        """One streaming completion: (ttft, [itl...], completion_tokens) or raises."""
        c = self.conn()
        sent = time.perf_counter()
        c.request("POST", self.prefix + "/v1/completions", body=json.dumps(body), headers=self.headers)
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}: {r.read()[:300]!r}")
        ttft, last, itl, usage = None, None, [], None
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"error event: {chunk['error']}")
            if chunk.get("usage"):
                usage = chunk["usage"]
            choices = chunk.get("choices") or []
            if not choices or not (choices[0].get("logprobs") or choices[0].get("text")):
                continue
            now = time.perf_counter()
            if ttft is None:
                ttft = now - sent
            else:
                itl.append(now - last)
            last = now
        c.close()
        return ttft, itl, (usage or {}).get("completion_tokens", 0)


def run_level(target, model, concurrency, requests, input_len, output_len, seed):
    rng = random.Random(seed + concurrency)
    bodies = [
        {
            "model": model,
            "prompt": [rng.randrange(100, 40000) for _ in range(input_len)],
            "max_tokens": output_len,
            "ignore_eos": True,
            "temperature": 0,
            "logprobs": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for _ in range(requests)
    ]
    lock = threading.Lock()
    ttfts, itls, tokens, errors = [], [], [0], []
    next_i = [0]

    def client():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= len(bodies):
                return
            try:
                ttft, itl, n = target.stream(bodies[i])
            except Exception as e:  # noqa: BLE001  (counted and reported)
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                if ttft is not None:
                    ttfts.append(ttft)
                itls.extend(itl)
                tokens[0] += n

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "requests_per_s": round((requests - len(errors)) / wall, 3),
        "output_tok_per_s": round(tokens[0] / wall, 2),
        "ttft_ms": percentiles(ttfts),
        "itl_ms": percentiles(itls),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    ap.add_argument("--concurrency", default="1,4,16,64", help="comma-separated levels")
    ap.add_argument("--requests", type=int, default=None, help="requests per level (default: 4 x concurrency, at least 8)")
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--model", default=None, help="default: the first of /v1/models")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    target = Target(args.url, args.api_key)
    model = args.model or target.model()
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    results = []
    for c in levels:
        n = args.requests or max(8, 4 * c)
        res = run_level(target, model, c, n, args.input_len, args.output_len, args.seed)
        print(f"concurrency {c}: {res['requests_per_s']} req/s, {res['output_tok_per_s']} tok/s, "
              f"TTFT p50 {res['ttft_ms']['p50']} ms, ITL p50 {res['itl_ms']['p50']} ms, errors {res['errors']}",
              file=sys.stderr, flush=True)
        results.append(res)
    print(json.dumps({"url": args.url, "model": model, "input_len": args.input_len,
                      "output_len": args.output_len, "levels": results}, indent=1))
    sys.exit(1 if any(r["errors"] for r in results) else 0)


if __name__ == "__main__":
    main()
