# Host preparation for WireGuard userspace and network namespaces (tunnels); sourced by host-prep.sh.
# shellcheck shell=bash

host_prep_netd() {
  :
}
