#!/bin/sh
# Debian packages that only tests use, installed with apt-get as root on Debian; otherwise
# it says what is missing and leaves the tests that need them to skip or fall back:
# - chromium (and a font) for tests/gateway/test_ui.py, which drives it with Playwright's Python
#   package (Playwright's own browser downloads are never used);
# - iptables for the slow-link fault test on kernels without netem (tests/netns.py queues
#   the link's packets to tests/netem.py; without iptables it falls back to `tc tbf`).
set -eu
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium fonts-dejavu-core"
command -v iptables >/dev/null 2>&1 || need="$need iptables"
[ -n "$need" ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
else
    echo "test_packages.sh: missing$need and this is not root on Debian; install them" \
         "(apt-get install$need) or tests/gateway/test_ui.py skips and the slow-link test" \
         "uses tc tbf" >&2
fi
