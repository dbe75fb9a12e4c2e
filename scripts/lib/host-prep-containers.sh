# Host preparation for cgroups for crun (containers); sourced by host-prep.sh.
# shellcheck shell=bash

host_prep_containers() {
  :
}
