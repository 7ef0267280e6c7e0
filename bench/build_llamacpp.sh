#!/bin/sh
# Build llama.cpp's own batched bench from the llama.cpp sources inside the
# llama-cpp-python sdist of the version cortex pins, so both sides of the benchmark run
# the same kernels. Sources and binary stay in bench/.build (ignored by git).
set -eu
cd "$(dirname "$0")"
version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' ../pyproject.toml)
out=.build/llama.cpp-$version
bin=$(pwd)/$out/build/bin/llama-batched-bench
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p .build
python3 -m pip download -q --no-deps --no-binary=:all: -d .build "llama-cpp-python==$version" >&2
rm -rf "$out" && mkdir -p "$out"
tar xzf ".build/llama_cpp_python-$version.tar.gz" -C "$out" --strip-components=3 \
    "llama_cpp_python-$version/vendor/llama.cpp"
cmake -S "$out" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF >&2
cmake --build "$out/build" --target llama-batched-bench -j "$(nproc)" >&2
echo "$bin"
