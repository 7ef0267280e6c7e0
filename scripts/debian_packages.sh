#!/bin/sh
# Install Debian packages with apt-get when run as root on Debian; otherwise say what is
# missing and fail. Usage: sh scripts/debian_packages.sh WHO PACKAGE...
set -eu
who="$1"
shift
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
else
    echo "$who: please install: $*" >&2
    exit 1
fi
