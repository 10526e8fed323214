#!/usr/bin/env bats
# run_proxy.sh start / stop / restart / status / logs against the real proxy and simulator.

load helpers
bats_require_minimum_version 1.5.0

setup() {
  PORT="$(free_port)"
  SIM_PORT="$(free_port)"
  export PROXY_PORT="${PORT}" SIMULATOR_PORT="${SIM_PORT}"
  export PID_FILE="${BATS_TEST_TMPDIR}/proxy.pid"
  export LOG_FILE="${BATS_TEST_TMPDIR}/proxy.log"
  export SIM_TTFT_MS=10 SIM_TOKEN_MS=1 SIM_TOKENS=5
  EXTRA_PIDS=()
}

teardown() {
  "${PROJECT_DIR}/run_proxy.sh" stop >/dev/null 2>&1 3>&- || true
  local pid
  for pid in "${EXTRA_PIDS[@]+"${EXTRA_PIDS[@]}"}"; do
    kill_tree "${pid}"
  done
}

proxy() {
  "${PROJECT_DIR}/run_proxy.sh" "$@" 3>&-
}

@test "start, start again, status, stop during a stream, status" {
  export SIM_TOKEN_MS=100 SIM_TOKENS=15
  run proxy start
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"proxy started: http://127.0.0.1:${PORT} (pid "* ]]
  [[ "${output}" == *"upstream: built-in simulator (http://127.0.0.1:${SIM_PORT})"* ]]
  local pid
  pid="$(cat "${PID_FILE}")"
  healthy "${PORT}"

  run proxy start
  [ "${status}" -eq 0 ]
  [ "${output}" = "proxy already running: http://127.0.0.1:${PORT} (pid ${pid})" ]
  [ "$(cat "${PID_FILE}")" = "${pid}" ]

  run proxy status
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"proxy: running (pid ${pid}, up "* ]]
  [[ "${output}" == *"url: http://127.0.0.1:${PORT}"* ]]
  [[ "${output}" == *"upstream: built-in simulator"* ]]
  [[ "${output}" == *"health: ok"* ]]
  # started without --debug: no metric lines, a one-line note instead of the box
  [[ "${output}" == *"metrics: none in ${LOG_FILE} yet (metric lines need --debug / DEBUG=true)"* ]]

  # a 1.5 s stream is in flight when stop is asked: it still ends with [DONE]
  local stream="${BATS_TEST_TMPDIR}/stream.txt"
  curl -sN -X POST "http://127.0.0.1:${PORT}/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}' >"${stream}" 3>&- &
  local curl_pid=$!
  EXTRA_PIDS+=("${curl_pid}")
  wait_for 10 grep -q '"content":"Sure"' "${stream}"
  run proxy stop
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"proxy stopped"* ]]
  wait "${curl_pid}"
  [ "$(grep -c '^data: ' "${stream}")" -eq 18 ]
  [ "$(tail -n 2 "${stream}" | head -n 1)" = "data: [DONE]" ]

  pid_gone "${pid}"
  port_free "${PORT}"
  port_free "${SIM_PORT}"
  [ ! -e "${PID_FILE}" ]

  run proxy status
  [ "${status}" -eq 3 ]
  [ "${output}" = "proxy: not running" ]
}

@test "a stale pid file naming an unrelated live process is cleaned up and the process survives" {
  sleep 300 3>&- &
  local stranger=$!
  EXTRA_PIDS+=("${stranger}")
  echo "${stranger}" >"${PID_FILE}"

  run proxy status
  [ "${status}" -eq 3 ]
  [[ "${output}" == *"stale pid file removed"* ]]
  kill -0 "${stranger}"

  echo "${stranger}" >"${PID_FILE}"
  run proxy stop
  [ "${status}" -eq 0 ]
  kill -0 "${stranger}"

  echo "${stranger}" >"${PID_FILE}"
  run proxy start
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"proxy started"* ]]
  [ "$(cat "${PID_FILE}")" != "${stranger}" ]
  kill -0 "${stranger}"
}

@test "a pid file of a process that is gone is handled" {
  echo 999999 >"${PID_FILE}"
  run proxy start
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"proxy started"* ]]
}

@test "port in use: one line, exit 1, nothing left behind" {
  "${PY}" -m http.server --bind 127.0.0.1 "${PORT}" >/dev/null 2>&1 3>&- &
  EXTRA_PIDS+=("$!")
  wait_for 10 bash -c "(exec 4<>/dev/tcp/127.0.0.1/${PORT}) 2>/dev/null"

  run --separate-stderr proxy start
  [ "${status}" -eq 1 ]
  [ "${stderr}" = "run_proxy: port ${PORT} is in use (choose another with --port)" ]
  [ ! -e "${PID_FILE}" ]
  port_free "${SIM_PORT}"
}

@test "bad commands, flags and values are usage errors (exit 2) naming them" {
  run --separate-stderr proxy launch
  [ "${status}" -eq 2 ]
  [[ "${stderr}" == "run_proxy: unknown command 'launch'"* ]]
  [[ "${stderr}" == *"Usage: run_proxy.sh <command> [options]"* ]]

  local bad
  for bad in "--bogus" "--port 0" "--port 70000" "--port" "--workers x" "--max-concurrent 0" \
    "--log-level loud" "--upstream ftp://host" "--upstream localhost:8000" "--monitor-interval -1" \
    "--monitor-interval 0" "--monitor-interval abc"; do
    # shellcheck disable=SC2086 # the flag and its value are two words on purpose
    run --separate-stderr proxy start ${bad}
    [ "${status}" -eq 2 ] || { echo "not a usage error: ${bad}" >&3; false; }
    [[ "${stderr}" == "run_proxy: "* ]]
    [ "${output}" = "" ]
  done
  [ ! -e "${PID_FILE}" ]
}

@test "a bad environment value stops start with one line naming it" {
  QUEUE_TIMEOUT=soon run --separate-stderr proxy start
  [ "${status}" -eq 1 ]
  [ "${stderr}" = "run_proxy: QUEUE_TIMEOUT='soon' is not a number" ]
  [ ! -e "${PID_FILE}" ]
}

@test "help and --help print the usage with exit codes" {
  run proxy help
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"Usage: run_proxy.sh <command> [options]"* ]]
  [[ "${output}" == *"3  status: not running"* ]]
  run proxy --help
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"logs [--metrics] [--no-follow]"* ]]
}

@test "restart gives a new process with the settings of the last start" {
  run proxy start --debug --monitor-interval 0.2
  [ "${status}" -eq 0 ]
  local old
  old="$(cat "${PID_FILE}")"
  run proxy restart
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"proxy stopped"* ]]
  [[ "${output}" == *"proxy started"* ]]
  local new
  new="$(cat "${PID_FILE}")"
  [ "${new}" != "${old}" ]
  pid_gone "${old}"
  healthy "${PORT}"
  # DEBUG=true and the 0.2 s interval were kept: the new process writes metric lines
  wait_for 10 grep -q "concurrency\[${new}\]: \[CONCURRENCY\]" "${LOG_FILE}"

  # status ends with the monitor box of the new process
  run proxy status
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"proxy: running (pid ${new}, up "* ]]
  [[ "${output}" == *"║  Uvicorn Concurrency Monitor"* ]]
  [[ "${output}" == *"║  Active Concurrent:  0"* ]]
  [[ "${output}" == *"║  Queue Depth:        0"* ]]
}

@test "logs --metrics shows metric lines only, follows, and a SIGTERM leaves nothing behind" {
  run proxy start --debug --monitor-interval 0.2
  [ "${status}" -eq 0 ]
  curl -fsS "http://127.0.0.1:${PORT}/v1/models" >/dev/null
  local out="${BATS_TEST_TMPDIR}/metrics.txt"
  "${PROJECT_DIR}/run_proxy.sh" logs --metrics >"${out}" 2>&1 3>&- &
  local logs_pid=$!
  EXTRA_PIDS+=("${logs_pid}")
  local first
  wait_for 10 test -s "${out}"
  first="$(wc -l <"${out}")"
  # it follows: more lines arrive after the first read
  wait_for 10 bash -c "[ \$(wc -l <'${out}') -ge $((first + 6)) ]"
  # SIGTERM to the pid the caller has (as `kill`, systemd or a supervisor sends it): that
  # process ends quietly and nothing is left following the log
  local tail_pid
  tail_pid="$(pgrep -f -- "--pid=${logs_pid} " | head -n 1)"
  [ -n "${tail_pid}" ]
  kill -TERM "${logs_pid}"
  wait_for 10 pid_gone "${logs_pid}"
  wait_for 10 pid_gone "${tail_pid}"
  run grep -v -E '\[(CONCURRENCY|ENDPOINTS|SYSTEM|LATENCY)\]' "${out}"
  [ "${status}" -eq 1 ] || { echo "not metric lines: ${output}" >&3; false; }
  run proxy logs --no-follow
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"[CONCURRENCY]"* ]]
}

@test "status and stop when nothing runs" {
  run proxy status
  [ "${status}" -eq 3 ]
  [ "${output}" = "proxy: not running" ]
  run proxy stop
  [ "${status}" -eq 0 ]
  [ "${output}" = "proxy not running" ]
}

@test "after SIGKILL of the proxy, start works again (reusing the simulator left running)" {
  run proxy start
  [ "${status}" -eq 0 ]
  local pid sim
  pid="$(cat "${PID_FILE}")"
  sim="$(cat "${PID_FILE%.pid}.simulator.pid")"
  kill -KILL "${pid}"
  wait_for 10 pid_gone "${pid}"
  run proxy status
  [ "${status}" -eq 3 ]
  run --separate-stderr proxy start
  [ "${status}" -eq 0 ]
  [[ "${stderr}" == *"reusing the simulator left running (pid ${sim})"* ]]
  [[ "${output}" == *"proxy started"* ]]
  healthy "${PORT}"
  curl -fsS -X POST "http://127.0.0.1:${PORT}/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"hi"}]}' >/dev/null
  run proxy stop
  [ "${status}" -eq 0 ]
  wait_for 10 pid_gone "${sim}"
}

@test "pid, state and log files are not world-writable" {
  run proxy start --debug
  [ "${status}" -eq 0 ]
  wait_for 10 test -s "${LOG_FILE}"
  local file mode
  for file in "${PID_FILE}" "${PID_FILE%.pid}.state" "${PID_FILE%.pid}.simulator.pid" "${LOG_FILE}"; do
    mode="$(stat -c %a "${file}")"
    [ $((8#${mode} & 8#002)) -eq 0 ] || { echo "${file} is world-writable (${mode})" >&3; false; }
  done
}

@test "arguments with spaces, quotes and \$() are data, never code" {
  local odd="${BATS_TEST_TMPDIR}/a dir/it's \$(touch pwned) \"x\".log"
  mkdir -p "$(dirname "${odd}")"
  cd "${BATS_TEST_TMPDIR}"
  run proxy start --debug --log-file "${odd}"
  [ "${status}" -eq 0 ]
  wait_for 10 grep -q '\[CONCURRENCY\]' "${odd}"
  [ ! -e pwned ]
  [ ! -e "${PROJECT_DIR}/pwned" ]
  run proxy status
  [[ "${output}" == *"║  Uvicorn Concurrency Monitor"* ]]
  # shellcheck disable=SC2016 # the $() must reach the script unexpanded
  run --separate-stderr proxy start --upstream 'http://x/$(touch pwned)'
  [ "${status}" -eq 0 ]  # already running: nothing is started, nothing evaluated
  [ ! -e pwned ]
}
