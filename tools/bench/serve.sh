#!/usr/bin/env bash
# Online serving benchmark: tessera serve and llama.cpp's llama-server (64 parallel slots,
# same model as F32 GGUF), one after the other in one run, both driven by
# tools/bench_serve.py with the same workload at each concurrency level.
# Usage: OUT=DIR tools/bench/serve.sh [TESSERA_BIN] [PEERS_DIR]   (run on an idle machine)
# Env: LEVELS, REQ, IN, OUTLEN (workload); TPORT, LPORT (ports); TESSERA_ARGS (extra serve flags);
# SKIP_PEER=1 runs tessera only, SKIP_TESSERA=1 the peer only.
set -euo pipefail
T=${1:-target/release/tessera}
P=${2:-/opt/tessera-peers}
M=models/smollm2-135m-instruct
OUT=${OUT:-benches/results}
mkdir -p "$OUT"
LEVELS=${LEVELS:-1,4,16,64} REQ=${REQ:-64} IN=${IN:-64} OUTLEN=${OUTLEN:-64}
TPORT=${TPORT:-18081} LPORT=${LPORT:-18080} TESSERA_ARGS=${TESSERA_ARGS:-}
wait_health() { for _ in $(seq 1 240); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }
ARGS="--concurrency $LEVELS --requests $REQ --input-len $IN --output-len $OUTLEN"

if [ "${SKIP_TESSERA:-0}" != 1 ]; then
  echo "== tessera serve"
  "$T" serve --model $M --port $TPORT $TESSERA_ARGS >"$OUT/tessera-serve.log" 2>&1 &
  TS=$!
  wait_health http://127.0.0.1:$TPORT/health
  python3 tools/bench_serve.py --url http://127.0.0.1:$TPORT $ARGS | tee "$OUT/serve-tessera.json"
  kill $TS; wait $TS 2>/dev/null || true
fi

[ "${SKIP_PEER:-0}" = 1 ] && exit 0
echo "== llama.cpp server, 64 slots"
"$P/LB/bin/llama-server" -m "$P/smollm2-f32.gguf" -np 64 -c $((64 * 512)) -t 2 --port $LPORT >"$OUT/llama-server.log" 2>&1 &
LS=$!
wait_health http://127.0.0.1:$LPORT/health
python3 tools/bench_serve.py --url http://127.0.0.1:$LPORT $ARGS | tee "$OUT/serve-llamacpp.json"
kill $LS; wait $LS 2>/dev/null || true
