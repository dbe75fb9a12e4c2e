# Host preparation for libvirt daemons, /dev/kvm permissions, capability cache (VMs); sourced by host-prep.sh.
# shellcheck shell=bash

host_prep_libvirt() {
  [[ $(id -u) == 0 ]] || return 0
  # /dev/kvm as udev would leave it. At root:root 0600, libvirt's QEMU probe (as root) sees KVM but
  # QEMU's own user cannot open it, and libvirt throws its capabilities cache away on every call.
  if [[ -e /dev/kvm ]] && getent group kvm >/dev/null; then
    if [[ $(stat -c '%G %a' /dev/kvm) != "kvm 660" ]]; then
      chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
      rm -f /var/cache/libvirt/qemu/capabilities/*.xml
    fi
  fi
  # Without systemd nobody starts the daemons; virtlogd first (libvirtd's QEMU driver needs it).
  # A libvirtd started here is this run's: its PID goes to the tests (OUTRIDER_OWN_LIBVIRTD_PID), which may
  # restart that one (and only that one) to check that vmm reconnects.
  local d
  for d in virtlogd libvirtd; do
    if ! { [[ -s /run/$d.pid ]] && kill -0 "$(cat "/run/$d.pid")" 2>/dev/null; }; then
      command -v "$d" >/dev/null || outrider_die "$d is missing; run scripts/deps"
      "$d" -d
      if [[ $d == libvirtd ]]; then
        local j
        for j in $(seq 100); do [[ -s /run/libvirtd.pid ]] && break; sleep 0.1; done
        OUTRIDER_OWN_LIBVIRTD_PID=$(cat /run/libvirtd.pid 2>/dev/null || true)
        export OUTRIDER_OWN_LIBVIRTD_PID
      fi
    fi
  done
  local i
  for i in $(seq 600); do
    virsh -q -c qemu:///system version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  outrider_die "libvirtd does not answer on qemu:///system"
}
