#!/bin/sh
# The gateway benchmark in one command: install what it needs, then run bench/gateway.py
# (arguments pass through: --short, --docs, --no-litellm).
set -eu
cd "$(dirname "$0")/.."
need=""
command -v wrk >/dev/null 2>&1 || need="$need wrk"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx"
[ -z "$need" ] || sh scripts/debian_packages.sh bench/gateway.sh $need
[ -x .venv/bin/granian ] || sh scripts/install.sh neuron,bench
# LiteLLM, the peer, in a venv of its own: its pins must not move ours.
if [ ! -x bench/.venv-litellm/bin/litellm ]; then
    python3 -m venv bench/.venv-litellm
    bench/.venv-litellm/bin/python -m pip install -q "litellm[proxy]==1.106.2"
fi
exec .venv/bin/python bench/gateway.py "$@"
