# Background processes that a script starts itself, stopped by PID only (sourced, not run).
# shellcheck shell=bash
#
#   outrider_spawn NAME LOGFILE CMD [ARGS...]   start CMD in the background, output appended to LOGFILE;
#                                               sets OUTRIDER_LAST_PID and records it for outrider_stop_all
#   outrider_stop PID                           SIGTERM, up to 5 s, then SIGKILL; only if PID is still ours
#   outrider_stop_all                           stop every recorded PID, newest first (for an EXIT trap)

OUTRIDER_PIDS=()
OUTRIDER_PID_NAMES=()
OUTRIDER_PID_EXES=()
OUTRIDER_LAST_PID=

outrider_spawn() {
  local name=$1 log=$2
  shift 2
  "$@" </dev/null >>"$log" 2>&1 &
  OUTRIDER_LAST_PID=$!
  OUTRIDER_PIDS+=("$OUTRIDER_LAST_PID")
  OUTRIDER_PID_NAMES+=("$name")
  OUTRIDER_PID_EXES+=("$(basename "$1")")
}

# True while PID runs the program we started under that PID (guards against a recycled PID).
outrider_pid_is_ours() {
  local pid=$1 exe=$2 argv0
  argv0=$({ tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null | head -n1)
  [[ -n $argv0 ]] || return 1
  [[ $(basename "$argv0") == "$exe" ]]
}

# The last spawned command runs another program in its place (ip netns exec PROG ...): record PROG, so
# outrider_stop recognises the PID as ours.
outrider_spawned_exe() {
  OUTRIDER_PID_EXES[${#OUTRIDER_PID_EXES[@]} - 1]=$1
}

outrider_stop() {
  local pid=$1 exe=${2:-} i
  if [[ -z $exe ]]; then
    for i in "${!OUTRIDER_PIDS[@]}"; do
      [[ ${OUTRIDER_PIDS[$i]} == "$pid" ]] && exe=${OUTRIDER_PID_EXES[$i]}
    done
  fi
  [[ -n $exe ]] || return 0
  outrider_pid_is_ours "$pid" "$exe" || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    outrider_pid_is_ours "$pid" "$exe" || break
    # A stopped child stays a zombie until reaped; treat that as gone.
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
    sleep 0.1
  done
  if outrider_pid_is_ours "$pid" "$exe" && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

outrider_stop_all() {
  local i
  for ((i = ${#OUTRIDER_PIDS[@]} - 1; i >= 0; i--)); do
    outrider_stop "${OUTRIDER_PIDS[$i]}" "${OUTRIDER_PID_EXES[$i]}"
  done
  OUTRIDER_PIDS=()
  OUTRIDER_PID_NAMES=()
  OUTRIDER_PID_EXES=()
}
