# Host preparation for libvirt daemons, /dev/kvm permissions, capability cache (VMs); sourced by host-prep.sh.
# shellcheck shell=bash

host_prep_libvirt() {
  :
}
