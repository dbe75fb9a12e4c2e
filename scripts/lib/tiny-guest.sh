#!/usr/bin/env bash
# tiny-guest.sh OUTDIR: build the tiny guest the VM tests and benchmarks boot, once (idempotent; a
# second run with the files present does nothing).
#
#   OUTDIR/vmlinux          the uncompressed kernel of the package linux-image-amd64 depends on (PVH
#                           entry point: boots about twice as fast under TCG as the bzImage)
#   OUTDIR/initrd.cpio.gz   busybox-static initramfs whose /init prints OUTRIDER-GUEST-MARKER on the serial
#                           console, then a heartbeat line every 2 s; an ACPI power button press powers
#                           it off (busybox acpid with the kernel's evdev and button modules)
#   OUTDIR/base.qcow2       a small empty qcow2 image, for tests that need a disk to overlay
#
# Files are built under OUTDIR/.work and moved into place last, so an interrupted run leaves no
# half-made guest behind. Needs: apt-get, dpkg-deb, xz, cpio, gzip, busybox (static), qemu-img.
set -euo pipefail

out=${1:?usage: tiny-guest.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [[ -s $out/vmlinux && -s $out/initrd.cpio.gz && -s $out/base.qcow2 ]]; then
  exit 0
fi

work=$out/.work
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
cd "$work"

# The kernel: whatever image package the linux-image-amd64 metapackage points at.
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
[[ -n $kpkg ]] || { echo "tiny-guest: cannot resolve the kernel package of linux-image-amd64" >&2; exit 1; }
apt-get download -q -o APT::Sandbox::User=root "$kpkg" >/dev/null
dpkg-deb -x "$kpkg"_*.deb kroot
vmlinuz=$(ls kroot/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}

# vmlinuz carries the kernel as an xz stream after the real-mode setup code; cut it out. Not through a
# pipe: with pipefail, xz's early exit would turn into SIGPIPE for the producer.
off=$(LC_ALL=C grep -abo -P '\xfd7zXZ\x00' "$vmlinuz" | head -1 | cut -d: -f1)
[[ -n $off ]] || { echo "tiny-guest: no xz stream in $vmlinuz" >&2; exit 1; }
tail -c +$((off + 1)) "$vmlinuz" >vmlinux.xz
xz -dc --single-stream vmlinux.xz >vmlinux

# initramfs
root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,etc/acpi/PWRF,lib/modules}
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in sh echo sleep mount poweroff insmod acpid cat ls mknod; do
  ln -s busybox "$root/bin/$applet"
done
# The power button reaches user space only through the button and evdev modules (not built in).
for m in drivers/acpi/button drivers/input/evdev; do
  f=$(find kroot/lib/modules/"$kver" -path "*/$m.ko*" | head -1 || true)
  [[ -n $f ]] || continue
  case $f in
    *.xz) xz -dc "$f" >"$root/lib/modules/${m##*/}.ko" ;;
    *) cp "$f" "$root/lib/modules/${m##*/}.ko" ;;
  esac
done
cat >"$root/etc/acpi/PWRF/00000080" <<'SCRIPT'
#!/bin/sh
echo "OUTRIDER-GUEST-POWEROFF"
poweroff -f
SCRIPT
chmod 755 "$root/etc/acpi/PWRF/00000080"
cat >"$root/init" <<'SCRIPT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in /lib/modules/*.ko; do [ -e "$m" ] && insmod "$m" 2>/dev/null; done
acpid -c /etc/acpi 2>/dev/null
echo "OUTRIDER-GUEST-MARKER"
n=0
while :; do
  sleep 2
  n=$((n + 1))
  echo "OUTRIDER-GUEST-HEARTBEAT $n"
done
SCRIPT
chmod 755 "$root/init"
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >initrd.cpio.gz

qemu-img create -q -f qcow2 base.qcow2 64M

# QEMU runs as an unprivileged user: the files must be world-readable.
chmod 644 vmlinux initrd.cpio.gz base.qcow2
mv base.qcow2 initrd.cpio.gz "$out/"
mv vmlinux "$out/vmlinux"
