#!/usr/bin/env bash
# Alternating A/B of `tessera bench throughput` between two binaries on the same host.
#
#   tools/bench/ab_throughput.sh BEFORE_BIN AFTER_BIN OUT_DIR ROUNDS [throughput flags...]
#   e.g. tools/bench/ab_throughput.sh /tmp/before/tessera target/release/tessera \
#          benches/results/DATE/ab 3 --dtype f32 --requests 64 --input-len 128 \
#          --output-len 128 --threads 2 --isa avx2
#
# Each round runs BEFORE then AFTER; each run's JSON goes to OUT_DIR/{before,after}_R.json
# and the total tok/s of every run is printed at the end. Builds nothing.
set -euo pipefail
before=$1 after=$2 out=$3 rounds=$4
shift 4
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  for side in before after; do
    bin=$before
    [ "$side" = after ] && bin=$after
    "$bin" bench throughput "$@" --json 2>/dev/null | tail -1 > "$out/${side}_$r.json"
  done
done
for side in before after; do
  echo "$side $(for f in "$out/${side}"_*.json; do
    python3 -c "import json, sys; print(round(json.load(open(sys.argv[1]))['total_tok_s'], 1))" "$f"
  done | tr '\n' ' ')"
done
