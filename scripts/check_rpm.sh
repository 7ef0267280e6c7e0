#!/bin/sh
# Build the source RPM from a fresh sdist and verify the systemd units (.ci/run calls
# this). Installs rpm's tools from Debian's packages when they are missing and we are
# root; elsewhere it says what is missing and fails.
set -eu
cd "$(dirname "$0")/.."
need=""
command -v rpmbuild >/dev/null 2>&1 || need="$need rpm"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
    else
        echo "check_rpm.sh: please install:$need" >&2
        exit 1
    fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

.venv/bin/python -m build --sdist --outdir "$work/SOURCES" . >/dev/null
cp rpm/cortex.service rpm/neuron.service rpm/cortex.sysusers "$work/SOURCES/"
rpmbuild -bs --define "_topdir $work" rpm/cortex.spec
test -f "$work"/SRPMS/cortex-*.src.rpm

# verify resolves ExecStart on this host: point it at a stub, check everything else.
printf '#!/bin/sh\n' > "$work/stub" && chmod +x "$work/stub"
for unit in cortex neuron; do
    sed "s|^ExecStart=/usr/[^ ]*|ExecStart=$work/stub|" "rpm/$unit.service" > "$work/$unit.service"
done
systemd-analyze verify "$work/cortex.service" "$work/neuron.service"
echo "check_rpm.sh: SRPM built and units verified"
