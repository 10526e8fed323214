#!/usr/bin/env bats
# scripts/monitor_uvicorn.sh on fixture logs built from the integration guide's example lines.

load helpers
bats_require_minimum_version 1.5.0

MONITOR="${PROJECT_DIR}/scripts/monitor_uvicorn.sh"

setup() {
  LOG="${BATS_TEST_TMPDIR}/proxy.log"
  unset LOG_FILE MONITOR_UPDATE_INTERVAL
}

# now_ts [SECONDS_AGO]: a log timestamp as the proxy writes it.
now_ts() {
  date -d "@$(($(date +%s) - ${1:-0}))" '+%Y-%m-%d %H:%M:%S,123'
}

# snapshot ACTIVE PEAK TOTAL FAILED QUEUE [SECONDS_AGO] [PID]: three prefixed metric lines.
snapshot() {
  local ts
  ts="$(now_ts "${6:-0}")"
  local prefix="${ts} INFO concurrency[${7:-4242}]: "
  printf '%s[CONCURRENCY] Active: %s/%s | Peak: %s | Total: %s | Failed: %s | Queue: %s | Uptime: 1h 23m 45s\n' \
    "${prefix}" "$1" "$2" "$2" "$3" "$4" "$5"
  printf '%s[ENDPOINTS] /v1/chat/completions: %s | /v1/completions: 0 | /v1/models: 0\n' "${prefix}" "$1"
  printf '%s[SYSTEM] CPU: 42.5%% | Memory: 512.3MB | Threads: 8\n' "${prefix}"
}

guide_lines() {
  printf '%s\n' \
    '[CONCURRENCY] Active: 4/12 | Total: 256 | Failed: 0 | Queue: 2 | Uptime: 1h 23m 45s' \
    '[ENDPOINTS] /v1/chat/completions: 3 | /v1/completions: 1 | /v1/models: 0' \
    '[SYSTEM] CPU: 42.5% | Memory: 512.3MB | Threads: 8'
}

# json_field KEY...: read JSON on stdin, print the value at the key path (python, no jq needed).
json_field() {
  "${PY}" -c 'import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1:]:
    value = value[key]
print(json.dumps(value))' "$@"
}

@test "the guide's lines render as the guide's box, character for character" {
  guide_lines >"${LOG}"
  run "${MONITOR}" --log "${LOG}"
  [ "${status}" -eq 0 ]
  local expected
  expected="$(cat <<'BOX'
╔════════════════════════════════════════════════════════╗
║  Uvicorn Concurrency Monitor
╠════════════════════════════════════════════════════════╣
║  Active Concurrent:  4
║  Peak Concurrent:    12
║  Total Requests:     256
║  Failed Requests:    0
║  Queue Depth:        2
║  Uptime:             1h 23m 45s
╠════════════════════════════════════════════════════════╣
║  Active Endpoints:
║    • /v1/chat/completions: 3
║    • /v1/completions: 1
╠════════════════════════════════════════════════════════╣
║  System Metrics:
║    CPU: 42.5% | Memory: 512.3 MB | Threads: 8
╚════════════════════════════════════════════════════════╝
BOX
)"
  [ "${output}" = "${expected}" ]
}

@test "--json has DESIGN.md's keys, numbers as numbers" {
  guide_lines >"${LOG}"
  run --separate-stderr "${MONITOR}" --json --log "${LOG}"
  [ "${status}" -eq 0 ]
  [ "$(json_field queue_depth <<<"${output}")" = "2" ]
  [ "$(json_field active <<<"${output}")" = "4" ]
  [ "$(json_field peak <<<"${output}")" = "12" ]
  [ "$(json_field total_requests <<<"${output}")" = "256" ]
  [ "$(json_field failed_requests <<<"${output}")" = "0" ]
  [ "$(json_field cancelled_requests <<<"${output}")" = "null" ]
  [ "$(json_field uptime <<<"${output}")" = '"1h 23m 45s"' ]
  [ "$(json_field uptime_seconds <<<"${output}")" = "5025" ]
  [ "$(json_field endpoints <<<"${output}")" = '{"/v1/chat/completions": 3, "/v1/completions": 1, "/v1/models": 0}' ]
  [ "$(json_field system <<<"${output}")" = '{"cpu_percent": 42.5, "memory_mb": 512.3, "threads": 8}' ]
  [ "$(json_field log_file <<<"${output}")" = "\"${LOG}\"" ]
  [ "$(json_field stale <<<"${output}")" = "false" ]
  "${PY}" -m json.tool <<<"${output}" >/dev/null
}

@test "of several snapshots the newest wins" {
  { snapshot 1 1 10 0 0 4; snapshot 5 7 20 1 3 2; snapshot 2 7 30 2 0 0; } >"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "$(json_field total_requests <<<"${output}")" = "30" ]
  [ "$(json_field active <<<"${output}")" = "2" ]
  [ "$(json_field peak <<<"${output}")" = "7" ]
  [ "$(json_field failed_requests <<<"${output}")" = "2" ]
  [ "$(json_field endpoints '/v1/chat/completions' <<<"${output}")" = "2" ]
  [ "$(json_field pid <<<"${output}")" = "4242" ]
}

@test "a half-written last line is not read" {
  snapshot 3 3 30 0 0 >"${LOG}"
  printf '%s INFO concurrency[4242]: [CONCURRENCY] Active: 9/9 | Peak: 9 | Total: 99 | Failed: 9 | Queue: 9 | Uptime: 1h 23m 4' "$(now_ts)" >>"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "${status}" -eq 0 ]
  [ "$(json_field total_requests <<<"${output}")" = "30" ]
  # torn inside the last number of [SYSTEM]: 8 threads, not 1
  snapshot 3 3 31 0 0 >"${LOG}"
  head -c -2 "${LOG}" >"${LOG}.tmp" && mv "${LOG}.tmp" "${LOG}"
  snapshot 3 3 32 0 0 | head -n 2 >>"${LOG}"
  printf '%s INFO concurrency[4242]: [SYSTEM] CPU: 1.0%% | Memory: 1.0MB | Threads: 1' "$(now_ts)" >>"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "$(json_field total_requests <<<"${output}")" = "32" ]
  [ "$(json_field system threads <<<"${output}")" != "1" ]
}

@test "binary junk, NUL bytes and garbage metric-like lines do not break it" {
  {
    snapshot 1 1 5 0 0
    head -c 4096 /dev/urandom
    printf '\n\000\377\376[CONCURRENCY] Active: x/y | Total: lots\n'
    printf '[CONCURRENCY] Active: 1/2 | Total: 3\n'
    printf '[SYSTEM] CPU: hot | Memory: 1MB\n'
    snapshot 2 2 6 0 1
    head -c 2048 /dev/urandom | tr -d '\n'
    printf '\n'
  } >"${LOG}"
  run --separate-stderr "${MONITOR}" --json --log "${LOG}"
  [ "${status}" -eq 0 ]
  [ "$(json_field total_requests <<<"${output}")" = "6" ]
  [ "$(json_field queue_depth <<<"${output}")" = "1" ]
  "${PY}" -m json.tool <<<"${output}" >/dev/null
  run "${MONITOR}" --log "${LOG}"
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"Total Requests:     6"* ]]
}

@test "CRLF line endings" {
  guide_lines | sed 's/$/\r/' >"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "${status}" -eq 0 ]
  [ "$(json_field uptime <<<"${output}")" = '"1h 23m 45s"' ]
  [ "$(json_field system threads <<<"${output}")" = "8" ]
}

@test "very long lines and metrics far from the end of the file" {
  {
    head -c 3000000 /dev/zero | tr '\0' 'x'
    printf '\n'
    snapshot 7 8 70 0 0
    # 2 MB of other log lines after the metrics: the read window has to grow
    local line
    line="$(now_ts) INFO uvicorn.access[4242]: 127.0.0.1:5555 - \"GET /v1/models HTTP/1.1\" 200 OK padding......"
    yes "${line}" | head -n 20000
  } >"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "${status}" -eq 0 ]
  [ "$(json_field total_requests <<<"${output}")" = "70" ]
}

@test "an empty log: No metrics found, with hints, exit 1" {
  : >"${LOG}"
  run --separate-stderr "${MONITOR}" --log "${LOG}"
  [ "${status}" -eq 1 ]
  [ "${output}" = "" ]
  [[ "${stderr}" == "monitor_uvicorn: No metrics found in ${LOG}"* ]]
  [[ "${stderr}" == *"DEBUG=true"* ]]
}

@test "a missing log: a clear message, exit 1" {
  run --separate-stderr "${MONITOR}" --log "${BATS_TEST_TMPDIR}/nope.log"
  [ "${status}" -eq 1 ]
  [[ "${stderr}" == "monitor_uvicorn: log file ${BATS_TEST_TMPDIR}/nope.log does not exist"* ]]
}

@test "an unreadable log: a clear message, exit 1" {
  if [[ "$(id -u)" == 0 ]]; then
    skip "root reads any file: unreadable cannot be produced"
  fi
  guide_lines >"${LOG}"
  chmod 000 "${LOG}"
  run --separate-stderr "${MONITOR}" --log "${LOG}"
  [ "${status}" -eq 1 ]
  [[ "${stderr}" == *"is not readable"* ]]
}

@test "just rotated: the new log has no metrics yet, the newest rotation is read" {
  snapshot 6 6 60 0 0 >"${LOG}.1"
  printf '%s INFO uvicorn.error[4242]: Started server process\n' "$(now_ts)" >"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "${status}" -eq 0 ]
  [ "$(json_field total_requests <<<"${output}")" = "60" ]
  [ "$(json_field log_file <<<"${output}")" = "\"${LOG}.1\"" ]
}

@test "stale: metrics older than 3 intervals are flagged in the box and the JSON" {
  { snapshot 1 1 10 0 0 120; snapshot 1 1 11 0 0 118; } >"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "$(json_field stale <<<"${output}")" = "true" ]
  run "${MONITOR}" --log "${LOG}"
  [[ "${output}" == *"STALE:"*"old"* ]]
  # spacing of the last two lines is 2 s, so 5 s old is still fresh...
  { snapshot 1 1 10 0 0 7; snapshot 1 1 11 0 0 5; } >"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "$(json_field stale <<<"${output}")" = "false" ]
  # ...unless MONITOR_UPDATE_INTERVAL says the lines come every second
  MONITOR_UPDATE_INTERVAL=1 run "${MONITOR}" --json --log "${LOG}"
  [ "$(json_field stale <<<"${output}")" = "true" ]
}

@test "--watch to a pipe appends one JSON object per interval" {
  snapshot 2 2 20 0 0 >"${LOG}"
  local out="${BATS_TEST_TMPDIR}/watch.jsonl"
  "${MONITOR}" --watch --json --interval 0.2 --log "${LOG}" >"${out}" 2>&1 3>&- &
  local pid=$!
  wait_for 10 bash -c "[ \$(wc -l <'${out}') -ge 3 ]"
  kill -TERM "${pid}"
  wait_for 10 pid_gone "${pid}"
  local line
  while IFS= read -r line; do
    [ "$(json_field total_requests <<<"${line}")" = "20" ]
  done <"${out}"
}

@test "--watch to a pipe without --json appends timestamped boxes" {
  guide_lines >"${LOG}"
  local out="${BATS_TEST_TMPDIR}/watch.txt"
  "${MONITOR}" --watch --interval 0.2 --log "${LOG}" >"${out}" 2>&1 3>&- &
  local pid=$!
  wait_for 10 bash -c "[ \$(grep -c '^--- ' '${out}') -ge 2 ]"
  kill -TERM "${pid}"
  wait_for 10 pid_gone "${pid}"
  grep -q '║  Active Concurrent:  4' "${out}"
  run ! grep -q $'\033' "${out}"
}

@test "--check: OK, WARNING, CRITICAL and UNKNOWN exit codes" {
  snapshot 2 2 100 5 3 >"${LOG}"
  run "${MONITOR}" --check --log "${LOG}" --max-queue 10 --max-failed-ratio 0.1
  [ "${status}" -eq 0 ]
  [[ "${output}" == "UVICORN OK - active 2, peak 2, queue 3, total 100, failed 5 (5.0%)"* ]]
  run "${MONITOR}" --check --log "${LOG}" --max-queue 2
  [ "${status}" -eq 1 ]
  [[ "${output}" == "UVICORN WARNING - queue 3 > 2;"* ]]
  run "${MONITOR}" --check --log "${LOG}" --max-failed-ratio 0.01
  [ "${status}" -eq 1 ]
  snapshot 2 2 100 5 3 600 >"${LOG}"
  run "${MONITOR}" --check --log "${LOG}"
  [ "${status}" -eq 2 ]
  [[ "${output}" == "UVICORN CRITICAL - metrics stale"* ]]
  : >"${LOG}"
  run "${MONITOR}" --check --log "${LOG}"
  [ "${status}" -eq 3 ]
  [[ "${output}" == "UVICORN UNKNOWN - No metrics found in ${LOG}" ]]
}

@test "usage errors exit 2 with a one-line reason and the usage" {
  local bad
  for bad in "--bogus" "--interval 0" "--interval abc" "--interval" "--max-queue x" "--max-failed-ratio 2" \
    "--log" "--check --watch"; do
    # shellcheck disable=SC2086 # flag and value are two words on purpose
    run --separate-stderr "${MONITOR}" ${bad}
    [ "${status}" -eq 2 ] || { echo "not a usage error: ${bad}" >&3; false; }
    [[ "${stderr}" == "monitor_uvicorn: "* ]]
    [[ "${stderr}" == *"Usage: monitor_uvicorn.sh"* ]]
  done
  run "${MONITOR}" --help
  [ "${status}" -eq 0 ]
  [[ "${output}" == *"Exit codes:"* ]]
}

@test "default log: LOG_FILE, else logs/proxy.log of the script's project, from any folder" {
  cd "${BATS_TEST_TMPDIR}"
  run --separate-stderr "${MONITOR}" --json
  [[ "${stderr}" == *"${PROJECT_DIR}/logs/proxy.log"* || "${output}" == *"${PROJECT_DIR}/logs/proxy.log"* ]]
  guide_lines >"${LOG}"
  LOG_FILE="${LOG}" run "${MONITOR}" --json
  [ "${status}" -eq 0 ]
  [ "$(json_field log_file <<<"${output}")" = "\"${LOG}\"" ]
}

@test "odd names and arguments with spaces, quotes and \$() are data, never code" {
  local odd="${BATS_TEST_TMPDIR}/a dir/it's \$(touch pwned) \"x\".log"
  mkdir -p "$(dirname "${odd}")"
  printf '%s\n' \
    '[CONCURRENCY] Active: 1/1 | Total: 1 | Failed: 0 | Queue: 0 | Uptime: 0h 0m 1s' \
    '[ENDPOINTS] /v1/chat/completions: 1 | /v1/a"b\c: 1' >"${odd}"
  run "${MONITOR}" --json --log "${odd}"
  [ "${status}" -eq 0 ]
  [ "$(json_field log_file <<<"${output}")" = "$("${PY}" -c 'import json,sys; print(json.dumps(sys.argv[1]))' "${odd}")" ]
  [ "$(json_field endpoints '/v1/a"b\c' <<<"${output}")" = "1" ]
  [ ! -e pwned ]
  [ ! -e "${BATS_TEST_TMPDIR}/a dir/pwned" ]
}

@test "[LATENCY] lines: a box section and latency_ms / ttft_ms in the JSON" {
  snapshot 1 1 10 0 0 >"${LOG}"
  printf '%s INFO concurrency[4242]: [LATENCY] p50: 120ms | p95: 850ms | p99: 1200ms | TTFT p50: 210ms | TTFT p95: 600ms\n' \
    "$(now_ts)" >>"${LOG}"
  run "${MONITOR}" --log "${LOG}"
  [[ "${output}" == *"║  Latency (last 5 min):"*"║    p50: 120ms | p95: 850ms | p99: 1200ms | TTFT p50: 210ms | TTFT p95: 600ms"* ]]
  run "${MONITOR}" --json --log "${LOG}"
  [ "$(json_field latency_ms <<<"${output}")" = '{"p50": 120, "p95": 850, "p99": 1200}' ]
  [ "$(json_field ttft_ms <<<"${output}")" = '{"p50": 210, "p95": 600, "p99": null}' ]
  printf '%s INFO concurrency[4242]: [LATENCY] p50: 0.4ms | p95: - | p99: - | TTFT p50: - | TTFT p95: -\n' "$(now_ts)" >>"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "$(json_field latency_ms <<<"${output}")" = '{"p50": 0.4, "p95": null, "p99": null}' ]
}

@test "several workers in one log are summed (Workers: N), a gone worker is left out" {
  {
    snapshot 9 9 900 9 9 60 1111   # a worker of a previous run, a minute older: gone
    snapshot 2 5 40 1 0 1 2222
    snapshot 3 4 60 2 1 0 3333
  } >"${LOG}"
  run "${MONITOR}" --json --log "${LOG}"
  [ "$(json_field workers <<<"${output}")" = "2" ]
  [ "$(json_field active <<<"${output}")" = "5" ]
  [ "$(json_field total_requests <<<"${output}")" = "100" ]
  [ "$(json_field failed_requests <<<"${output}")" = "3" ]
  [ "$(json_field queue_depth <<<"${output}")" = "1" ]
  [ "$(json_field peak <<<"${output}")" = "9" ]
  [ "$(json_field endpoints '/v1/chat/completions' <<<"${output}")" = "5" ]
  [ "$(json_field pids <<<"${output}")" = "[2222, 3333]" ]
  [ "$(json_field system memory_mb <<<"${output}")" = "1024.6" ]
  run "${MONITOR}" --log "${LOG}"
  [[ "${output}" == *"║  Workers:            2"* ]]
  [[ "${output}" == *"║  Peak Concurrent:    9 (sum of the workers' peaks)"* ]]
  [[ "${output}" == *"║  Total Requests:     100"* ]]
}

@test "--log A --log B adds up two proxies" {
  local other="${BATS_TEST_TMPDIR}/other.log"
  snapshot 2 2 20 1 0 0 100 >"${LOG}"
  snapshot 3 3 30 0 2 0 100 >"${other}"
  run "${MONITOR}" --json --log "${LOG}" --log "${other}"
  [ "${status}" -eq 0 ]
  [ "$(json_field workers <<<"${output}")" = "2" ]
  [ "$(json_field total_requests <<<"${output}")" = "50" ]
  [ "$(json_field queue_depth <<<"${output}")" = "2" ]
  [ "$(json_field log_files <<<"${output}")" = "[\"${LOG}\", \"${other}\"]" ]
  # one of them stale: the whole is stale (a cron job must hear of a dead instance)
  snapshot 3 3 30 0 2 600 100 >"${other}"
  run "${MONITOR}" --check --log "${LOG}" --log "${other}"
  [ "${status}" -eq 2 ]
}
