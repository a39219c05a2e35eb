#!/usr/bin/env bash
# A/B: B0=/tmp/tessera-before (HEAD 94f86d4), B1=/tmp/tessera-exp; alternating rounds.
set -euo pipefail
OUT=$1; mkdir -p $OUT
M=/work/main/models/smollm2-135m-instruct
for isa in avx512 avx2; do
  for r in 1 2 3; do for b in B1 B0; do
    bin=$([ $b = B0 ] && echo /tmp/tessera-before || echo /tmp/tessera-exp)
    $bin bench latency --model $M --dtype f32 --repeats 3 --decode-tokens 64 --threads 2 --isa $isa 2>/dev/null | tail -1 > $OUT/lat_${isa}_${b}_$r.json
  done; done
  for r in 1 2; do for b in B1 B0; do
    bin=$([ $b = B0 ] && echo /tmp/tessera-before || echo /tmp/tessera-exp)
    $bin bench throughput --model $M --dtype f32 --requests 64 --input-len 128 --output-len 128 --threads 2 --isa $isa --json 2>/dev/null | tail -1 > $OUT/thr_${isa}_${b}_$r.json
  done; done
done
