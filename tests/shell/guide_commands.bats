#!/usr/bin/env bats
# Every command of the integration guide (../shared/seed/...), run as written against the real
# proxy started with `./run_proxy.sh start --debug --monitor-interval 1`, its output checked
# against GET /monitor. The one change: the guide's port 9999 is replaced by a free port.
# The commands run from a folder where ./run_proxy.sh, ./scripts and logs/proxy.log are where
# the guide says (links to this project; the log is the proxy's LOG_FILE).

load helpers
bats_require_minimum_version 1.5.0

setup_file() {
  export WORK="${BATS_FILE_TMPDIR}/guide"
  mkdir -p "${WORK}/logs"
  ln -s "${PROJECT_DIR}/run_proxy.sh" "${WORK}/run_proxy.sh"
  ln -s "${PROJECT_DIR}/scripts" "${WORK}/scripts"
  PORT="$(free_port)"
  SIM_PORT="$(free_port)"
  export PORT PROXY_PORT="${PORT}" SIMULATOR_PORT="${SIM_PORT}"
  export LOG_FILE="${WORK}/logs/proxy.log" PID_FILE="${WORK}/logs/proxy.pid"
  # slow enough that 10 parallel requests are all in flight together for a while
  export SIM_TTFT_MS=1500 SIM_TOKEN_MS=5 SIM_TOKENS=10
  cd "${WORK}" || return
  ./run_proxy.sh start --debug --monitor-interval 1 3>&- >"${WORK}/start.out"
}

teardown_file() {
  cd "${WORK}" || return
  ./run_proxy.sh stop >/dev/null 2>&1 3>&- || true
}

setup() {
  cd "${WORK}" || return
}

monitor_field() {
  curl -fsS "http://127.0.0.1:${PORT}/monitor" | "${PY}" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

monitor_is() {
  [ "$(monitor_field "$1")" = "$2" ]
}

# wait_line REGEX: until a [CONCURRENCY] line written from now on matches (lines are 1 s apart).
wait_line() {
  local seen
  seen="$(wc -l <logs/proxy.log)"
  wait_for 15 bash -c "tail -n +$((seen + 1)) logs/proxy.log | grep -q -E '$1'"
}

need_grep_p() {
  echo x | grep -qP 'x' 2>/dev/null || skip "this grep has no -P (the guide's recipes need GNU grep with PCRE)"
}

@test "Basic Monitoring: the guide's 10 parallel curls show Active 10 / Peak 10 in the log and the box" {
  local base
  base="$(monitor_field total_requests)"
  # Terminal 3 of the guide, verbatim but for the port
  for i in {1..10}; do
    curl -X POST "http://localhost:${PORT}/v1/chat/completions" \
      -H "Content-Type: application/json" \
      -d '{"model":"llama","messages":[{"role":"user","content":"test"}]}' >"${BATS_TEST_TMPDIR}/curl.${i}" 2>/dev/null 3>&- &
  done
  wait_for 10 monitor_is active 10
  wait_line "Active: 10/10 \| Peak: 10 \| Total: $((base + 10)) "
  grep -q '\[ENDPOINTS\] /v1/chat/completions: 10 | /v1/completions: 0 | /v1/models: 0' logs/proxy.log

  run ./scripts/monitor_uvicorn.sh
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"║  Active Concurrent:  10"* ]]
  [[ "${output}" == *"║  Peak Concurrent:    10"* ]]
  [[ "${output}" == *"║  Total Requests:     $((base + 10))"* ]]
  [[ "${output}" == *"║  Failed Requests:    0"* ]]
  [[ "${output}" == *"║    • /v1/chat/completions: 10"* ]]
  [[ "${output}" == *"║    CPU: "*"% | Memory: "*" MB | Threads: "* ]]
  wait
  for i in {1..10}; do
    grep -q '"object":"chat.completion"' "${BATS_TEST_TMPDIR}/curl.${i}"
  done
}

@test "Debug Log Parsing Examples, verbatim" {
  need_grep_p
  curl -s -o /dev/null -H 'X-Simulator-Fault: error-500' -X POST "http://127.0.0.1:${PORT}/v1/completions" -d '{"prompt":"x"}'
  curl -s -o /dev/null -H 'X-Simulator-Fault: error-500' -X POST "http://127.0.0.1:${PORT}/v1/completions" -d '{"prompt":"x"}'
  wait_line "Active: 0/[0-9]+ \| Peak: [0-9]+ \| Total: [0-9]+ \| Failed: 2 "
  local peak failed
  peak="$(monitor_field peak)"
  failed="$(monitor_field failed_requests)"
  [ "${failed}" -eq 2 ]

  # Extract Peak Concurrent
  run bash -c 'grep "\[CONCURRENCY\]" logs/proxy.log | \
  grep -oP '"'"'Peak: \K\d+'"'"' | \
  sort -n | \
  tail -1'
  [ "${output}" = "${peak}" ]

  # Find High CPU Episodes: prints the [SYSTEM] lines whose CPU is above 80 (the prefix has no % or |)
  run bash -c 'grep "\[SYSTEM\]" logs/proxy.log | \
  awk -F'"'"'CPU: |%'"'"' '"'"'{if($2 > 80) print $0}'"'"''
  [ "${status}" -eq 0 ]
  local line
  while IFS= read -r line; do
    [[ -z "${line}" ]] && continue
    awk -F'CPU: |%' '{ exit !($2 > 80) }' <<<"${line}"
  done <<<"${output}"
  # the split really yields the CPU figure: with a threshold of -1 every line is printed
  [ "$(grep "\[SYSTEM\]" logs/proxy.log | awk -F'CPU: |%' '{if($2 > -1) print $0}' | wc -l)" -eq \
    "$(grep -c "\[SYSTEM\]" logs/proxy.log)" ]

  # Count Failed Requests: sums the cumulative counter of every line (see the user guide);
  # the newest line's value is the count.
  run bash -c 'grep "\[CONCURRENCY\]" logs/proxy.log | \
  grep -oP '"'"'Failed: \K\d+'"'"' | \
  awk '"'"'{sum+=$1} END {print sum}'"'"''
  [ "${output}" = "$(grep -o 'Failed: [0-9]*' logs/proxy.log | awk '{s += $2} END {print s}')" ]
  [ "${output}" -ge "${failed}" ]
  [ "$(grep "\[CONCURRENCY\]" logs/proxy.log | grep -oP 'Failed: \K\d+' | tail -1)" = "${failed}" ]

  # shellcheck disable=SC2016 # expanded by the inner bash
  wait_for 15 bash -c '[ "$(grep -c "\[ENDPOINTS\]" logs/proxy.log)" -ge 5 ]'
  # Identify Bottleneck Endpoints: counts endpoint names in the last 5 lines (each appears 5 times;
  # the first name of each line comes with the log prefix, so it is unique per line)
  run bash -c 'grep "\[ENDPOINTS\]" logs/proxy.log | \
  tail -5 | \
  grep -oP '"'"'[^|]+(?=:)'"'"' | \
  sort | uniq -c | \
  sort -rn'
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"5  /v1/completions"* ]]
  [[ "${output}" == *"5  /v1/models"* ]]
  [[ "${output}" == *"1 "*" INFO concurrency["*"]: [ENDPOINTS] /v1/chat/completions"* ]]
}

@test "Quick Reference, verbatim" {
  need_grep_p
  wait_line "Active: 0/"
  # Get JSON metrics: the same numbers as GET /monitor
  run ./scripts/monitor_uvicorn.sh --json
  [ "${status}" -eq 0 ]
  local key
  for key in active peak total_requests failed_requests queue_depth; do
    [ "$("${PY}" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "${output}" "${key}")" = \
      "$(monitor_field "${key}")" ]
  done

  # Parse peak concurrent
  run bash -c 'grep "\[CONCURRENCY\]" logs/proxy.log | grep -oP '"'"'Peak: \K\d+'"'"''
  [ "${status}" -eq 0 ]
  [ "${lines[-1]}" = "$(monitor_field peak)" ]

  # Export metrics to file
  run bash -c './scripts/monitor_uvicorn.sh --json > metrics_$(date +%s).json'
  [ "${status}" -eq 0 ]
  "${PY}" -m json.tool metrics_*.json >/dev/null
  rm -f metrics_*.json

  # Check status with metrics
  run ./run_proxy.sh status
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"proxy: running (pid $(cat logs/proxy.pid)"* ]]
  [[ "${output}" == *"║  Uvicorn Concurrency Monitor"* ]]

  # View logs with metrics (follows: bounded here)
  ./run_proxy.sh logs >"${BATS_TEST_TMPDIR}/logs.txt" 2>&1 3>&- &
  local logs_pid=$!
  wait_for 10 grep -q '\[CONCURRENCY\]' "${BATS_TEST_TMPDIR}/logs.txt"
  kill_tree "${logs_pid}"

  # Monitor in real-time (bounded here; to a file it appends snapshots)
  ./scripts/monitor_uvicorn.sh --watch >"${BATS_TEST_TMPDIR}/watch.txt" 2>&1 3>&- &
  local watch_pid=$!
  wait_for 10 grep -q 'Active Concurrent:' "${BATS_TEST_TMPDIR}/watch.txt"
  kill -TERM "${watch_pid}"
  wait_for 10 pid_gone "${watch_pid}"
}

@test "Pattern 1 (bounded): watch to a file during a load, then the final box" {
  ./scripts/monitor_uvicorn.sh --watch --interval 1 > load_test_metrics.txt 3>&- &
  MONITOR_PID=$!
  if command -v ab >/dev/null 2>&1; then
    ab -n 1000 -c 50 "http://127.0.0.1:${PORT}/health" >/dev/null 2>&1
  else
    echo "# ab is not installed (apt-get install apache2-utils): 50 curl requests to /health instead" >&3
    for _ in $(seq 1 50); do curl -fsS -o /dev/null "http://localhost:${PORT}/health"; done
  fi
  wait_for 10 grep -q 'Active Concurrent:' load_test_metrics.txt
  echo "=== Final Metrics ===" >> load_test_metrics.txt
  ./scripts/monitor_uvicorn.sh >> load_test_metrics.txt
  kill $MONITOR_PID
  wait_for 10 pid_gone "${MONITOR_PID}"
  grep -q '^--- ' load_test_metrics.txt
  [ "$(sed -n '/=== Final Metrics ===/,$p' load_test_metrics.txt | grep -c 'Uvicorn Concurrency Monitor')" -eq 1 ]
  rm -f load_test_metrics.txt
}

@test "Pattern 2 (bounded: two snapshots, 1 s apart)" {
  for _ in 1 2; do
    {
      echo "$(date): Metrics snapshot"
      ./scripts/monitor_uvicorn.sh --json
      echo ""
    } >> metrics_continuous.json
    sleep 1
  done
  [ "$(grep -c 'Metrics snapshot' metrics_continuous.json)" -eq 2 ]
  grep '^{' metrics_continuous.json | while IFS= read -r line; do
    "${PY}" -m json.tool <<<"${line}" >/dev/null
  done
  rm -f metrics_continuous.json
}

@test "Pattern 3 (one iteration), and its one-command form" {
  command -v jq >/dev/null 2>&1 || skip "jq is not installed: the guide's Pattern 3 needs it (--check below does not)"
  METRICS=$(./scripts/monitor_uvicorn.sh --json)
  QUEUE=$(echo "$METRICS" | jq '.queue_depth')
  [ "${QUEUE}" = "$(monitor_field queue_depth)" ]
  run bash -c "if [ \"${QUEUE}\" -gt 10 ]; then echo \"ALERT: Queue depth is ${QUEUE}!\"; fi"
  [ "${output}" = "" ]
  run ./scripts/monitor_uvicorn.sh --check --max-queue 10
  [ "${status}" -eq 0 ]
  [[ "${output}" == "UVICORN OK - "* ]]
}

@test "Pattern 4, verbatim: the newest line's Active, Peak and Total" {
  need_grep_p
  run bash -c 'grep "\[CONCURRENCY\]" logs/proxy.log | tail -20 | while read line; do
  ACTIVE=$(echo "$line" | grep -oP '"'"'Active: \K\d+(?=/)'"'"')
  PEAK=$(echo "$line" | grep -oP '"'"'Peak: \K\d+'"'"')
  TOTAL=$(echo "$line" | grep -oP '"'"'Total: \K\d+'"'"')

  echo "Active: $ACTIVE, Peak: $PEAK, Total: $TOTAL"
done'
  [ "${status}" -eq 0 ]
  local last
  last="$(grep "\[CONCURRENCY\]" logs/proxy.log | tail -1)"
  local expected
  expected="$(sed -E 's/.*Active: ([0-9]+)\/[0-9]+ \| Peak: ([0-9]+) \| Total: ([0-9]+) .*/Active: \1, Peak: \2, Total: \3/' <<<"${last}")"
  [ "${lines[-1]}" = "${expected}" ]
  [ "${#lines[@]}" -le 20 ]
}

@test "Troubleshooting commands" {
  run bash -c 'ps aux | grep uvicorn'
  [[ "${output}" == *"-m uvicorn app.main:app --host 127.0.0.1 --port ${PORT}"* ]]
  run ls -lh logs/proxy.log
  [ "${status}" -eq 0 ]
  run bash -c 'tail -50 logs/proxy.log | grep CONCURRENCY'
  [ "${status}" -eq 0 ]
  run curl "http://localhost:${PORT}/health"
  [[ "${output}" == *'"status":"ok"'* ]]
}

@test "Production combination: no monitoring, so the monitor says No metrics found" {
  local dir="${BATS_TEST_TMPDIR}/prod"
  mkdir -p "${dir}"
  (
    export PROXY_PORT SIMULATOR_PORT PID_FILE="${dir}/proxy.pid" LOG_FILE="${dir}/proxy.log"
    PROXY_PORT="$(free_port)"
    SIMULATOR_PORT="$(free_port)"
    export DEBUG=false
    export ENABLE_CONCURRENCY_MONITOR=false
    export LOG_LEVEL=info
    ./run_proxy.sh start 3>&-
    curl -fsS -o /dev/null "http://127.0.0.1:${PROXY_PORT}/health"
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PROXY_PORT}/monitor")"
    run --separate-stderr ./scripts/monitor_uvicorn.sh
    ./run_proxy.sh stop 3>&- >/dev/null
    [ "${code}" = 404 ]
    [ "${status}" -eq 1 ]
    [[ "${stderr}" == "monitor_uvicorn: No metrics found in ${LOG_FILE}"* ]]
    ! grep -q '\[CONCURRENCY\]' "${LOG_FILE}"
  )
}
