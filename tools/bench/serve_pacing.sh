#!/usr/bin/env bash
# Prefill pacing A/B: `tessera serve` with `--max-itl-ms auto` (the default) and `off` (whole
# 512-token prefill chunks, the rule before pacing), alternating for ROUNDS rounds on one
# binary, then llama-server once, all through tools/bench/serve.sh with its workload.
# Usage: OUT=DIR [ROUNDS=2] [LEVELS=4,16,64] tools/bench/serve_pacing.sh [TESSERA_BIN]   (idle machine)
set -euo pipefail
T=${1:-target/release/tessera}
OUT=${OUT:?set OUT to the results directory}
export LEVELS=${LEVELS:-4,16,64}
for r in $(seq 1 "${ROUNDS:-2}"); do
  for m in auto off; do
    OUT=$OUT/$m-$r SKIP_PEER=1 TESSERA_ARGS="--max-itl-ms $m" tools/bench/serve.sh "$T" 2>&1 | grep '^concurrency' | sed "s/^/$m round $r: /"
  done
done
OUT=$OUT/peer SKIP_TESSERA=1 tools/bench/serve.sh "$T" 2>&1 | grep '^concurrency' | sed 's/^/llama-server: /'
