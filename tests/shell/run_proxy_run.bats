#!/usr/bin/env bats
# `./run_proxy.sh run --debug`: foreground proxy + simulator, answered the guide's curl, stopped cleanly.

load helpers
bats_require_minimum_version 1.5.0

setup() {
  PORT="$(free_port)"
  SIM_PORT="$(free_port)"
  export PROXY_PORT="${PORT}" SIMULATOR_PORT="${SIM_PORT}"
  export LOG_FILE="${BATS_TEST_TMPDIR}/proxy.log"
  export SIM_TTFT_MS=10 SIM_TOKEN_MS=1 SIM_TOKENS=5
  RUN_PID=""
}

teardown() {
  if [[ -n "${RUN_PID}" ]]; then
    kill_tree "${RUN_PID}"
  fi
}

start_run() {
  "${PY}" -c "${DEFAULT_SIGINT}" "${PROJECT_DIR}/run_proxy.sh" run "$@" >"${BATS_TEST_TMPDIR}/run.out" 2>&1 3>&- &
  RUN_PID=$!
  wait_for 30 healthy "${PORT}"
}

# stop_run SIGNAL: signal `run`, then it, its children (proxy, simulator) and their ports are gone.
stop_run() {
  local children child
  children="$(pgrep -P "${RUN_PID}" | tr '\n' ' ')"
  [ -n "${children}" ]
  kill -"$1" "${RUN_PID}"
  wait_for 20 pid_gone "${RUN_PID}"
  for child in ${children}; do
    wait_for 10 pid_gone "${child}"
  done
  wait_for 10 port_free "${PORT}"
  wait_for 10 port_free "${SIM_PORT}"
  RUN_PID=""
}

@test "run --debug answers the guide's chat completion and SIGINT leaves no process behind" {
  start_run --debug --monitor-interval 1
  run curl -sS -X POST "http://localhost:${PORT}/v1/chat/completions" \
    -H "Content-Type: application/json" \
    -d '{"model":"llama","messages":[{"role":"user","content":"test"}]}'
  [ "${status}" -eq 0 ]
  [[ "${output}" == *'"object":"chat.completion"'* ]]
  [[ "${output}" == *'"content":"Sure here is a simulated'* ]]
  wait_for 10 grep -q '\[CONCURRENCY\]' "${LOG_FILE}"

  stop_run INT
}

@test "run with a bad flag value is a usage error naming it" {
  run --separate-stderr "${PROJECT_DIR}/run_proxy.sh" run --port abc
  [ "${status}" -eq 2 ]
  [[ "${stderr}" == *"run_proxy: --port: 'abc' is not a port"* ]]
}

@test "run with a bad environment value is one line naming the variable" {
  MONITOR_UPDATE_INTERVAL=-1 run --separate-stderr "${PROJECT_DIR}/run_proxy.sh" run
  [ "${status}" -eq 1 ]
  [ "${stderr}" = "run_proxy: MONITOR_UPDATE_INTERVAL='-1' must be a positive number of seconds" ]
}

@test "run stopped by SIGTERM leaves no process behind" {
  start_run
  stop_run TERM
}
