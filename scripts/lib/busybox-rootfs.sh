#!/usr/bin/env bash
# busybox-rootfs.sh OUTDIR: build a tiny container rootfs tarball, OUTDIR/busybox-rootfs.tar, from the
# static busybox (busybox-static) and its applet symlinks. Cached: does nothing when the tarball is
# already newer than busybox itself. Prints the tarball's path.
set -euo pipefail

out=${1:?usage: busybox-rootfs.sh OUTDIR}
bb=$(command -v busybox || true)
[[ -n $bb ]] || { echo "busybox-rootfs: busybox not found (install busybox-static)" >&2; exit 1; }
"$bb" true || { echo "busybox-rootfs: $bb does not run" >&2; exit 1; }
if ldd "$bb" >/dev/null 2>&1; then
  echo "busybox-rootfs: $bb is dynamically linked; install busybox-static" >&2
  exit 1
fi

mkdir -p "$out"
tarball=$out/busybox-rootfs.tar
if [[ -f $tarball && $tarball -nt $bb && $tarball -nt ${BASH_SOURCE[0]} ]]; then
  echo "$tarball"
  exit 0
fi

work=$(mktemp -d "$out/.rootfs-XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,var}
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
for applet in $("$bb" --list); do
  [[ $applet == busybox ]] && continue
  ln -sf busybox "$root/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$work/rootfs.tar" .
mv "$work/rootfs.tar" "$tarball"
echo "$tarball"
