# Host preparation that tests and the demo need beyond installed packages (sourced, not run).
# shellcheck shell=bash
#
# scripts/test and scripts/demo call outrider_host_prep after scripts/deps. Add a step as a function
# named host_prep_<what> below and call it from outrider_host_prep; each step must be idempotent, quick
# when already done, and must only touch what Outrider's own tests and demo use.

# Each area keeps its steps in a file of its own next to this one.
for _f in "$(dirname "${BASH_SOURCE[0]}")"/host-prep-*.sh; do
  # shellcheck source=/dev/null
  source "$_f"
done
unset _f

outrider_host_prep() {
  host_prep_check_mosquitto_user
  host_prep_libvirt
  host_prep_containers
  host_prep_netd
}

# The broker drops privileges to this user when started as root; the package creates it.
host_prep_check_mosquitto_user() {
  if [[ $(id -u) == 0 ]] && ! id mosquitto >/dev/null 2>&1; then
    outrider_die "user 'mosquitto' is missing; reinstall the mosquitto package"
  fi
}
