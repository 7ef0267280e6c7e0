#!/bin/sh
# Packages that only tests use. Debian's, installed with apt-get as root on Debian; otherwise
# it says what is missing and leaves the tests that need them to skip or fall back:
# - chromium (and a font) for tests/gateway/test_ui.py, which drives it with Playwright's Python
#   package (Playwright's own browser downloads are never used);
# - iptables for the slow-link fault test on kernels without netem (tests/netns.py queues
#   the link's packets to tests/netem.py; without iptables it falls back to `tc tbf`);
# - nodejs and npm, to install the real agent CLIs the client tests run (tests/e2e/
#   test_claude_code.py): Claude Code and Codex from npm, at the versions pinned below, into
#   .ci/node (git-ignored), where the tests look for them (.ci/node/node_modules/.bin/).
set -eu
cd "$(dirname "$0")/.."
CLAUDE_CODE=2.1.332
CODEX=0.171.0
need=""
command -v chromium >/dev/null 2>&1 || need="$need chromium fonts-dejavu-core"
command -v iptables >/dev/null 2>&1 || need="$need iptables"
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $need
    else
        echo "test_packages.sh: missing$need and this is not root on Debian; install them" \
             "(apt-get install$need) or tests/gateway/test_ui.py and the agent CLI tests" \
             "skip and the slow-link test uses tc tbf" >&2
    fi
fi
installed() {  # the version of an npm package in .ci/node, or nothing
    sed -n 's/^  "version": "\(.*\)",$/\1/p' ".ci/node/node_modules/$1/package.json" 2>/dev/null
}
if [ "$(installed @anthropic-ai/claude-code)" != "$CLAUDE_CODE" ] ||
        [ "$(installed @openai/codex)" != "$CODEX" ]; then
    if command -v npm >/dev/null 2>&1; then
        mkdir -p .ci/node
        npm install --prefix .ci/node --no-save --no-audit --no-fund --loglevel=error \
            "@anthropic-ai/claude-code@$CLAUDE_CODE" "@openai/codex@$CODEX"
    else
        echo "test_packages.sh: no npm: the Claude Code and Codex tests skip" >&2
    fi
fi
