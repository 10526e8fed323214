#!/usr/bin/env bats
# run_proxy.sh setup: idempotent, and one clear line when Python is missing or the install fails.

load helpers
bats_require_minimum_version 1.5.0

@test "setup is a no-op when nothing changed" {
  run "${PROJECT_DIR}/run_proxy.sh" setup --dev
  [ "${status}" -eq 0 ]
  run --separate-stderr "${PROJECT_DIR}/run_proxy.sh" setup
  [ "${status}" -eq 0 ]
  [ "${stderr}" = "" ]
}

@test "no python3: one line, exit 1" {
  local copy="${BATS_TEST_TMPDIR}/project" bin="${BATS_TEST_TMPDIR}/bin"
  mkdir -p "${copy}" "${bin}"
  cp "${PROJECT_DIR}/run_proxy.sh" "${PROJECT_DIR}/requirements.txt" "${copy}/"
  local tool
  for tool in dirname readlink; do
    ln -s "$(command -v "${tool}")" "${bin}/${tool}"
  done
  run --separate-stderr env PATH="${bin}" "$(command -v bash)" "${copy}/run_proxy.sh" setup
  [ "${status}" -eq 1 ]
  [ "${stderr}" = "run_proxy: python3 (3.11 or newer) not found: install it and retry" ]
}

@test "a failed install: one line naming the log, exit 1" {
  local copy="${BATS_TEST_TMPDIR}/project"
  mkdir -p "${copy}"
  cp "${PROJECT_DIR}/run_proxy.sh" "${copy}/"
  printf 'this-package-does-not-exist-4c1f9e==0.0.1\n' >"${copy}/requirements.txt"
  run --separate-stderr "${copy}/run_proxy.sh" setup
  [ "${status}" -eq 1 ]
  [[ "${stderr}" == *"run_proxy: installing requirements.txt failed: see ${copy}/.venv/pip.log"* ]]
  [ -s "${copy}/.venv/pip.log" ]
  [ ! -e "${copy}/.venv/.stamp-requirements" ]
}
