#!/bin/sh
# Install cortex into ./.venv with the given extras (default: neuron).
# On a bare Debian machine (as root) it first adds what pip needs to build
# llama-cpp-python: the venv module and a C/C++ toolchain.
set -eu
cd "$(dirname "$0")/.."
extras="${1:-neuron}"

need=""
python3 -c 'import ensurepip, venv' 2>/dev/null || need="$need python3-venv"
command -v c++ >/dev/null 2>&1 || need="$need build-essential"
[ -z "$need" ] || sh scripts/debian_packages.sh install.sh $need

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python is pinned in pyproject.toml, so pip's wheel cache keeps hitting
# after the first build (~5.5 minutes on 2 cores).
.venv/bin/python -m pip install -q -e ".[$extras]"
