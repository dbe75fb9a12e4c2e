# Shared helpers for the entry-point scripts (sourced, not run).
# shellcheck shell=bash

OUTRIDER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# One line per step, to stderr so that stdout stays the scripts' own output.
outrider_step() { printf '\n==> %s\n' "$*" >&2; }
outrider_note() { printf '    %s\n' "$*" >&2; }
outrider_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

outrider_jobs() { nproc 2>/dev/null || echo 2; }

# outrider_elapsed SECONDS -> "3m07s"
outrider_elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# outrider_configure BUILD_DIR [cmake args...]: configure the project into BUILD_DIR (relative to the repo).
outrider_configure() {
  local dir=$1
  shift
  cmake -S "$OUTRIDER_ROOT" -B "$OUTRIDER_ROOT/$dir" "$@"
}

# outrider_build BUILD_DIR [targets...]: build everything, or only the given targets.
outrider_build() {
  local dir=$1
  shift
  local targets=()
  (($# > 0)) && targets=(--target "$@")
  cmake --build "$OUTRIDER_ROOT/$dir" -j"$(outrider_jobs)" "${targets[@]}"
}

# outrider_targets BUILD_DIR PREFIX: names of the build system's targets starting with PREFIX, one a line.
outrider_targets() {
  cmake --build "$OUTRIDER_ROOT/$1" --target help 2>/dev/null |
    sed -nE "s/^(\.\.\. )?($2[A-Za-z0-9_.-]*)(:.*)?\$/\2/p" | sort -u
}
