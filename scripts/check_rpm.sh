#!/bin/sh
# Build the source RPM from a fresh sdist, verify the systemd units, then unpack the SRPM
# and run its %install without the Python environments (which need pip's network and
# CUDA) to check the config files as they land in /etc/cortex: `cortex config check` on
# cortex.toml (and the models.toml it names), the neuron's loader on neuron.toml, and
# each unit's --config path present (.ci/run calls this). Installs rpm's tools from
# Debian's packages when they are missing and we are root; elsewhere it says what is
# missing and fails.
set -eu
cd "$(dirname "$0")/.."
need=""
command -v rpmbuild >/dev/null 2>&1 || need="$need rpm"
command -v rpm2archive >/dev/null 2>&1 || need="$need rpm2cpio"
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
set -- "$work"/SRPMS/cortex-*.src.rpm
srpm=$1
test -f "$srpm"

# verify resolves ExecStart on this host: point it at a stub, check everything else.
printf '#!/bin/sh\n' > "$work/stub" && chmod +x "$work/stub"
for unit in cortex neuron; do
    sed "s|^ExecStart=/usr/[^ ]*|ExecStart=$work/stub|" "rpm/$unit.service" > "$work/$unit.service"
done
systemd-analyze verify "$work/cortex.service" "$work/neuron.service"

# Unpack the SRPM and install from it alone, as a build host would. systemd's path macros
# come from systemd-rpm-macros on Fedora-like hosts; Debian's rpm has none, so give them.
mkdir -p "$work/srpm" "$work/check"
rpm2archive - < "$srpm" | tar -xzf - -C "$work/srpm"
rpmbuild -bi --nodeps --without environments --quiet \
    --define "_topdir $work/check" --define "_sourcedir $work/srpm" \
    --define "_unitdir /usr/lib/systemd/system" --define "_sysusersdir /usr/lib/sysusers.d" \
    --define "buildroot $work/root" "$work/srpm/cortex.spec" >"$work/install.log" 2>&1 \
    || { cat "$work/install.log" >&2; exit 1; }
etc="$work/root/etc/cortex"
.venv/bin/cortex config check "$etc/cortex.toml"
.venv/bin/python -c 'import sys; from cortex import load_neuron_config; load_neuron_config(sys.argv[1]); print(sys.argv[1] + ": ok")' "$etc/neuron.toml"
for unit in cortex neuron; do
    config=$(sed -n 's|^ExecStart=.* --config \([^ ]*\).*|\1|p' "$work/root/usr/lib/systemd/system/$unit.service")
    test -n "$config" && test -f "$work/root$config" \
        || { echo "check_rpm.sh: $unit.service reads '$config', which the RPM does not install" >&2; exit 1; }
done
echo "check_rpm.sh: SRPM built, units verified, installed configs pass"
