#!/usr/bin/env bash
# One prepared GPU check for a lent machine (see README "GPU (CUDA)").
#
# Build here, strip (the release binary keeps debug info: 63 MB, over the 64 MiB a call
# carries), then run there with the binary carried:
#   cargo build --release --features cuda && mkdir -p target/gpu && strip -o target/gpu/tessera target/release/tessera
#   device run: command "bash tools/gpu/check.sh", carry ["target/gpu/tessera"], timeout_s 330
#
# Stages (each writes its JSON whole, so a timeout still returns results):
#   device (NVRTC compiles cuda/ for the GPU), ops (every kernel vs its CPU reference on
#   fresh random inputs, outputs poisoned; cuBLASLt GEMMs; tiled prefill and split decode
#   attention; one result per op, an op that errors does not hide the others),
#   random_model (SmolLM2-shaped random model at f32 through the engine's path, the
#   coordinator with CUDA ranks as generate/serve --device cuda run it, vs the carried CPU
#   logits and greedy tokens), random_model_bf16_kv (the same with a bf16 KV pool: tiled
#   bf16 prefill and grouped decode kernels, looser logits bound, tokens reported), graphs
#   (decode replayed from CUDA graphs vs eager, bit for bit, batch 1 and batch 3 padded to
#   4), bandwidth (device copy), bench
#   (Llama-3-8B-shaped random model in bf16, weights generated on the host by
#   WeightFiles::random, bf16 KV pool: prefill and decode tokens/s at batch 1, 8, 64,
#   256, with and without graphs at small batch, next to the HBM bound) in
#   $OUT/gpu_check.json; then, last and in its own process with its own deadline (a hang
#   in ncclCommInitAll loses nothing else), nccl (one rank) in $OUT/nccl_check.json.
#   Prints a short table of both last.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/tessera-gpu-check}"
mkdir -p "$OUT"
BIN="${TESSERA_BIN:-target/gpu/tessera}"
LIMIT="${CHECK_SECONDS:-240}"
NCCL_LIMIT="${NCCL_SECONDS:-45}"
REFERENCE="tools/gpu/reference_smollm2_seed7.json"

libraries() {
    echo "== CUDA libraries from Python's site-packages (PyTorch's nvidia wheels)"
    NV=$(python3 -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
    LIBDIRS=""
    for lib in libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
        f=$( [ -n "$NV" ] && find "$NV" -name "$lib" 2>/dev/null | head -1 )
        if [ -n "$f" ]; then
            d=$(dirname "$f")
            case ":$LIBDIRS:" in *":$d:"*) ;; *) LIBDIRS="$LIBDIRS:$d" ;; esac
            echo "$lib: $f"
        else
            echo "$lib: not found under ${NV:-<no nvidia package>}"
        fi
    done
    # cudarc opens libnccl.so and the nvidia-nccl wheels ship libnccl.so.2 only: tessera
    # links it as ~/.cache/tessera/nccl/libnccl.so and runs itself again (README, "Libraries
    # from pip"), so the nccl stage checks that step too.
    export LD_LIBRARY_PATH="${LIBDIRS#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

main() {
    echo "== machine"
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
    if [ ! -x "$BIN" ]; then
        echo "no binary at $BIN: build and strip it here (see the top of this script) and carry it"
        return 2
    fi
    libraries
    export RUST_LOG="${RUST_LOG:-info}"

    echo "== tessera gpu-check (limit ${LIMIT}s)"
    timeout "$LIMIT" "$BIN" gpu-check --no-nccl --reference "$REFERENCE" \
        --out "$OUT/gpu_check.json" --model-dir /tmp/tessera-random-model | tee "$OUT/main.txt"
    local rc=${PIPESTATUS[0]}
    echo "== gpu-check exit status $rc (124: stopped at the ${LIMIT}s limit; partial JSON in $OUT)"

    echo "== tessera gpu-check --only-nccl (limit ${NCCL_LIMIT}s)"
    timeout -k 5 "$NCCL_LIMIT" "$BIN" gpu-check --only-nccl --reference "$REFERENCE" \
        --out "$OUT/nccl_check.json" | tee "$OUT/nccl.txt"
    local nrc=${PIPESTATUS[0]}
    echo "nccl link: $(ls -l ~/.cache/tessera/nccl/libnccl.so 2>&1)"
    echo "== nccl exit status $nrc (124/137: stopped at the ${NCCL_LIMIT}s limit)"

    echo
    echo "== summary (gpu-check $rc, nccl $nrc)"
    sed -n '/^== tessera gpu-check (/,$p' "$OUT/main.txt" | tail -n +2
    grep '^nccl 1 rank' "$OUT/nccl.txt" || echo "nccl 1 rank  NO RESULT (exit $nrc)"
    [ "$rc" -eq 0 ] && [ "$nrc" -eq 0 ]
}

# A plain pipe (not process substitution): the shell waits for tee, so the log is whole.
main 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
