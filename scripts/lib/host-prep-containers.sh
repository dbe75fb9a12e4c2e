# Host preparation for cgroups for crun (containers); sourced by host-prep.sh.
# shellcheck shell=bash

# crun refuses a hybrid cgroup host while cgroup2 (mounted at /sys/fs/cgroup/unified) still holds a
# controller; on these hosts that is hugetlb. Mounting hugetlb as a v1 hierarchy moves it off cgroup2.
# Idempotent: does nothing on a pure v1 or v2 host, or when cgroup2 holds no controller any more.
host_prep_containers() {
  local unified=/sys/fs/cgroup/unified
  # cgroupfs files report size 0, so test their content, not their size.
  [[ -f $unified/cgroup.controllers ]] || return 0
  local ctrls
  ctrls=$(cat "$unified/cgroup.controllers" 2>/dev/null || true)
  [[ -n $ctrls ]] || return 0
  if [[ $(id -u) != 0 ]]; then
    outrider_note "cgroup2 holds '$ctrls'; crun needs it moved to v1 (run as root), skipping"
    return 0
  fi
  local c
  for c in $ctrls; do
    mkdir -p "/sys/fs/cgroup/$c"
    mountpoint -q "/sys/fs/cgroup/$c" || mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
  done
  ctrls=$(cat "$unified/cgroup.controllers" 2>/dev/null || true)
  [[ -z $ctrls ]] || outrider_die "cgroup2 still holds '$ctrls' after moving them to v1; crun cannot run"
}
