#!/usr/bin/env bash
# Throughput benchmark of Tessera against its peers, measured in one run on one machine:
#   - tessera bench throughput (offline engine, 64 requests x 128 in / 128 out), tp 1 and 2
#   - tessera serve and llama.cpp's llama-server (64 parallel slots, same model as F32 GGUF),
#     both driven by tools/bench_serve.py with the same workload
#   - Hugging Face transformers batched generate (tools/peers/bench_transformers_batch.py)
# Usage: tools/bench/throughput.sh [TESSERA_BIN] [PEERS_DIR] [PYTHON]   (run on an idle machine)
set -euo pipefail
T=${1:-target/release/tessera}
P=${2:-/opt/tessera-peers}
PY=${3:-/opt/pyref/bin/python}
M=models/smollm2-135m-instruct
OUT=${OUT:-benches/results}
mkdir -p "$OUT"
N=64 IN=128 OUTLEN=128
wait_health() { for _ in $(seq 1 120); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }

echo "== tessera bench throughput (offline)"
for tp in 1 2; do
  "$T" bench throughput --model $M --tp $tp --requests $N --input-len $IN --output-len $OUTLEN --json 2>/dev/null | tee "$OUT/throughput-offline-tp$tp.json"
done

echo "== llama.cpp server, $N slots"
"$P/LB/bin/llama-server" -m "$P/smollm2-f32.gguf" -np $N -c $((N * 512)) -t 2 --port 18080 >/tmp/llama-server.log 2>&1 &
LS=$!
wait_health http://127.0.0.1:18080/health
python3 tools/bench_serve.py --url http://127.0.0.1:18080 --concurrency $N --requests $N --input-len $IN --output-len $OUTLEN | tee "$OUT/throughput-llamacpp-server.json"
kill $LS; wait $LS 2>/dev/null || true

echo "== tessera serve"
"$T" serve --model $M --port 18081 >/tmp/tessera-serve.log 2>&1 &
TS=$!
wait_health http://127.0.0.1:18081/health
python3 tools/bench_serve.py --url http://127.0.0.1:18081 --concurrency $N --requests $N --input-len $IN --output-len $OUTLEN | tee "$OUT/throughput-tessera-serve.json"
kill $TS; wait $TS 2>/dev/null || true

echo "== transformers batched generate"
"$PY" tools/peers/bench_transformers_batch.py --model $M --requests $N --input-len $IN --output-len $OUTLEN | tee "$OUT/throughput-transformers.json"
