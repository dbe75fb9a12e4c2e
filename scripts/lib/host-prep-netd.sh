# Host preparation for WireGuard userspace and network namespaces (tunnels); sourced by host-prep.sh.
# shellcheck shell=bash

# The tunnel tests make network namespaces and TUN devices (wireguard-go) and need root for that.
# wireguard-go keeps its UAPI sockets in /var/run/wireguard (one directory for the whole host), which it
# creates itself; making it here (0700, as wireguard-go does) only saves a surprise on hosts where
# /var/run is not writable later. Idempotent.
host_prep_netd() {
  if [[ $(id -u) != 0 ]]; then
    outrider_note "tunnel tests need root (network namespaces, TUN devices), skipping netd host preparation"
    return 0
  fi
  [[ -c /dev/net/tun ]] || outrider_die "/dev/net/tun is missing; wireguard-go cannot make tunnels"
  install -d -m 0700 /var/run/wireguard
}
