#!/usr/bin/env bash
# Build (once) a Raspberry Pi OS-like Debian Bookworm arm64 root for benchmarks/pi_smoke.py, without binfmt_misc:
# `debootstrap --foreign` downloads Debian's packages (python3 = 3.11, as on Raspberry Pi OS Bookworm) and the
# second stage, which would need to execute arm64 binaries, is replaced by unpacking every downloaded .deb with
# `dpkg-deb -x`. The programs then run as `qemu-aarch64-static -L ROOT -cpu cortex-a72 ROOT/usr/bin/python3`.
#   usage: benchmarks/pi_root.sh ROOT [MIRROR]      (as root; apt-get install debootstrap qemu-user-static)
set -euo pipefail
root=${1:?usage: pi_root.sh ROOT [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
if [ -f "$root/.pi-root-done" ]; then echo "pi-root: $root is ready (cached)"; exit 0; fi
for tool in debootstrap dpkg-deb qemu-aarch64-static; do
  command -v $tool >/dev/null || { echo "pi-root: $tool missing: apt-get install debootstrap qemu-user-static" >&2; exit 3; }
done
[ "$(id -u)" = 0 ] || { echo "pi-root: debootstrap needs root: run as root (or sudo)" >&2; exit 3; }
rm -rf "$root"; mkdir -p "$root"
echo "pi-root: debootstrap --foreign bookworm arm64 from $mirror into $root"
debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv,libstdc++6,libgomp1 \
  bookworm "$root" "$mirror"
echo "pi-root: unpacking $(ls "$root"/var/cache/apt/archives/*.deb | wc -l) packages (the second stage, without arm64 exec)"
for deb in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
# no device nodes in a folder that lives in the checkout (a copy of the tree would read /dev/zero forever); the
# emulated programs use the machine's /dev
find "$root" -xdev \( -type c -o -type b -o -type p -o -type s \) -delete
# usrmerge: /bin, /lib are links into /usr on Bookworm (debootstrap made them); the dynamic loader is found via -L
qemu-aarch64-static -L "$root" -cpu cortex-a72 "$root/usr/bin/python3" -c 'import sys, platform; print("pi-root:", platform.machine(), sys.version.split()[0])'
touch "$root/.pi-root-done"
