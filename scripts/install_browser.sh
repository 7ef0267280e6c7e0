#!/bin/sh
# Install Debian's chromium for the /ui test (tests/test_ui.py drives it with Playwright's
# Python package; Playwright's own browser downloads are never used). As root on Debian it
# runs apt-get; otherwise it says what is missing and leaves the test to skip.
set -eu
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        chromium fonts-dejavu-core
else
    echo "install_browser.sh: chromium is missing and this is not root on Debian;" \
         "install it (apt-get install chromium) or tests/test_ui.py will skip" >&2
fi
