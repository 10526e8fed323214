#!/usr/bin/env bash
# Summary: Run every check: ruff, shellcheck, bats, then pytest (its summary line comes last)
# Usage: run_tests.sh [pytest arguments...]
#
# Sets up .venv from requirements-dev.txt when needed (through `run_proxy.sh setup --dev`).
# Exit codes: 0 all checks passed; non-zero the first failing check's status.
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly PROJECT_DIR
readonly BIN="${PROJECT_DIR}/.venv/bin"

step() {
  printf '\n==> %s\n' "$*"
}

shell_files() {
  shopt -s nullglob
  printf '%s\n' run_proxy.sh run_tests.sh .ci/run scripts/*.sh bench/*.sh
}

# The monitor must work with mawk (Debian's default awk) and gawk: run its suite with each one
# installed here, through a folder that puts it first in PATH as `awk`.
monitor_with_each_awk() {
  local impl shim
  for impl in mawk gawk; do
    if ! command -v "${impl}" >/dev/null 2>&1; then
      echo "monitor suite with ${impl}: skipped, ${impl} is not installed (apt-get install ${impl})"
      continue
    fi
    shim="$(mktemp -d)"
    ln -s "$(command -v "${impl}")" "${shim}/awk"
    step "bats: monitor_uvicorn.sh with ${impl}"
    PATH="${shim}:${PATH}" bats tests/shell/monitor_uvicorn.bats
    rm -rf "${shim}"
  done
}

main() {
  cd "${PROJECT_DIR}"
  "${PROJECT_DIR}/run_proxy.sh" setup --dev
  export PATH="${BIN}:${PATH}"

  step "ruff"
  ruff check .
  ruff format --check .

  step "shellcheck"
  local files=()
  mapfile -t files < <(shell_files)
  shellcheck -x "${files[@]}"
  if compgen -G 'tests/shell/*.bats' >/dev/null; then
    # SC2030/SC2031: each @test runs in a subshell; variables set there reach teardown by design.
    shellcheck -x -s bash -e SC2030,SC2031 tests/shell/*.bats tests/shell/*.bash
  fi
  echo "shellcheck: ${#files[@]} scripts clean"

  if compgen -G 'tests/shell/*.bats' >/dev/null; then
    step "bats"
    bats --timing tests/shell
    monitor_with_each_awk
  fi

  step "pytest"
  python -m pytest "$@"
}

main "$@"
