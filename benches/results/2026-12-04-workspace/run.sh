#!/usr/bin/env bash
# Alternating before/after runs of the throughput benchmark (tp 1), raw JSON per run.
set -euo pipefail
cd /work/wt-model
OUT=benches/results/2026-12-04-workspace
mkdir -p $OUT
for i in 1 2 3; do
  for v in before after; do
    echo "== $v run $i $(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    /tmp/wt-model-bench/tessera-$v bench throughput --model models/smollm2-135m-instruct --tp 1 \
      --requests 64 --input-len 128 --output-len 128 --json 2>/dev/null > $OUT/tp1-$v-$i.json
    python3 -c "import json;d=json.load(open('$OUT/tp1-$v-$i.json'));print({k:v for k,v in d.items() if not isinstance(v,(dict,list))})"
  done
done
