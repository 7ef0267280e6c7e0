#!/bin/sh
# Build one of llama.cpp's own programs (llama-batched-bench by default, or the target
# named: llama-server) from the llama.cpp sources inside the llama-cpp-python sdist of
# the version cortex pins, so both sides of a benchmark run the same kernels. Sources
# and binaries stay in bench/.build (ignored by git); prints the binary's path.
set -eu
cd "$(dirname "$0")"
target=${1:-llama-batched-bench}
version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' ../pyproject.toml)
out=.build/llama.cpp-$version
bin=$(pwd)/$out/build/bin/$target
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p .build
if [ ! -f "$out/CMakeLists.txt" ]; then
    python3 -m pip download -q --no-deps --no-binary=:all: -d .build \
        "llama-cpp-python==$version" >&2
    rm -rf "$out" && mkdir -p "$out"
    tar xzf ".build/llama_cpp_python-$version.tar.gz" -C "$out" --strip-components=3 \
        "llama_cpp_python-$version/vendor/llama.cpp"
fi
# The server's web UI is neither built (npm) nor downloaded: the router needs none.
cmake -S "$out" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >&2
cmake --build "$out/build" --target "$target" -j "$(nproc)" >&2
echo "$bin"
