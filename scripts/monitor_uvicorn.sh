#!/usr/bin/env bash
# Summary: Show the proxy's concurrency metrics from its log: a box, JSON, a live view or a check
# Usage: monitor_uvicorn.sh [--json] [--watch [--interval S]] [--check [thresholds]] [--log FILE]
#
# Reads the newest [CONCURRENCY], [ENDPOINTS] and [SYSTEM] lines of the log (only its end,
# so the time taken does not grow with the log's size) and prints them.
#
# Options:
#   -j, --json               One JSON object (the keys of GET /monitor, plus log_file and stale)
#   -w, --watch              Redraw every interval until Ctrl-C; when stdout is not a terminal,
#                            append one timestamped snapshot per interval (JSON Lines with --json)
#   -i, --interval S         Seconds between redraws in --watch (default 2)
#   -l, --log FILE           Log to read (default: $LOG_FILE, else logs/proxy.log of this project)
#   -c, --check              One Nagios-style status line: OK, WARNING (a threshold crossed) or
#                            CRITICAL (metrics stale: the proxy stopped writing them)
#       --max-queue N        --check: WARNING when the queue depth is above N
#       --max-failed-ratio R --check: WARNING when failed/total is above R (0 to 1)
#   -h, --help               Show this help
#
# Metrics are stale when the newest line is older than 3 intervals (MONITOR_UPDATE_INTERVAL when
# set, else the spacing of the last two lines, else 2 s).
#
# Exit codes:
#   0  metrics shown
#   1  no metrics found, or the log is missing or unreadable
#   2  usage error
# With --check (Nagios plugin convention): 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (no metrics,
# or the log is missing or unreadable).
set -euo pipefail
export LC_ALL=C

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly PROG="monitor_uvicorn"
readonly FIRST_WINDOW=65536  # bytes read from the end of the log at first
readonly EOF_MARK="@@monitor-uvicorn-eof@@"

MODE="box"
WATCH=0
INTERVAL=2
LOG=""
MAX_QUEUE=""
MAX_FAILED_RATIO=""

err() {
  printf '%s: %s\n' "${PROG}" "$*" >&2
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

usage_error() {
  err "$1"
  usage >&2
  exit 2
}

is_number() {
  [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ || "$1" =~ ^\.[0-9]+$ ]]
}

parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -j | --json) MODE="json" ;;
      -w | --watch) WATCH=1 ;;
      -c | --check) MODE="check" ;;
      -h | --help) usage; exit 0 ;;
      -i | --interval | -l | --log | --max-queue | --max-failed-ratio)
        [[ $# -ge 2 ]] || usage_error "$1 needs a value"
        case "$1" in
          -i | --interval)
            if ! is_number "$2" || ! awk -v v="$2" 'BEGIN { exit !(v > 0) }'; then
              usage_error "--interval: '$2' is not a positive number of seconds"
            fi
            INTERVAL="$2"
            ;;
          -l | --log)
            [[ -n "$2" ]] || usage_error "--log needs a file name"
            LOG="$2"
            ;;
          --max-queue)
            [[ "$2" =~ ^[0-9]+$ ]] || usage_error "--max-queue: '$2' is not a whole number"
            MAX_QUEUE="$2"
            ;;
          --max-failed-ratio)
            if ! is_number "$2" || ! awk -v v="$2" 'BEGIN { exit !(v <= 1) }'; then
              usage_error "--max-failed-ratio: '$2' is not a number from 0 to 1"
            fi
            MAX_FAILED_RATIO="$2"
            ;;
        esac
        shift
        ;;
      *) usage_error "unknown option '$1'" ;;
    esac
    shift
  done
  if [[ "${MODE}" == "check" && "${WATCH}" == 1 ]]; then
    usage_error "--check and --watch do not go together"
  fi
  if [[ -z "${LOG}" ]]; then
    LOG="${LOG_FILE:-logs/proxy.log}"
    # A relative LOG_FILE is relative to the project, as it is for the proxy.
    [[ "${LOG}" == /* ]] || LOG="${SCRIPT_DIR}/../${LOG}"
    local dir
    if dir="$(cd "$(dirname "${LOG}")" 2>/dev/null && pwd)"; then
      LOG="${dir}/$(basename "${LOG}")"
    fi
  fi
}

# file_size FILE: bytes (wc -c seeks on a regular file: constant time).
file_size() {
  wc -c <"$1" | tr -d ' '
}

# read_window FILE BYTES: the last BYTES of FILE, NULs removed, then the end mark glued to the
# last byte, so that a last line with no newline yet (half-written) is recognised and skipped.
read_window() {
  tail -c "$2" "$1" | tr -d '\000'
  printf '%s\n' "${EOF_MARK}"
}

has_metrics() {
  # awk reads to the end: exiting early would make tail die of SIGPIPE, a failure under pipefail.
  read_window "$1" "$2" | awk 'index($0, "[CONCURRENCY] ") { found = 1 } END { exit !found }'
}

# choose_source: set SOURCE and WINDOW to the file and byte count holding the newest metrics.
# The window grows (x16) only while it holds no [CONCURRENCY] line; when the log has none
# (just rotated), its newest rotation (LOG.1) is read the same way.
choose_source() {
  local candidate size window
  for candidate in "${LOG}" "${LOG}.1"; do
    [[ -f "${candidate}" && -r "${candidate}" ]] || continue
    size="$(file_size "${candidate}")"
    window="${FIRST_WINDOW}"
    while :; do
      ((window > size)) && window="${size}"
      if has_metrics "${candidate}" "${window}"; then
        SOURCE="${candidate}"
        WINDOW="${window}"
        WINDOW_IS_WHOLE=$((window >= size))
        return 0
      fi
      ((window >= size)) && break
      window=$((window * 16))
    done
  done
  return 1
}

mtime_of() {
  date -r "$1" +%s 2>/dev/null || echo 0
}

# The parser and formatter: POSIX awk (mawk and gawk), one pass over the window.
# shellcheck disable=SC2016 # awk's own $fields
readonly AWK_PROGRAM='
function days_from_civil(y, m, d,    era, yoe, doy, doe) {
  y -= (m <= 2)
  era = int((y >= 0 ? y : y - 399) / 400)
  yoe = y - era * 400
  doy = int((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1
  doe = yoe * 365 + int(yoe / 4) - int(yoe / 100) + doy
  return era * 146097 + doe - 719468
}
# "YYYY-MM-DD HH:MM:SS[,mmm]" to seconds (the same clock on both sides: only differences count)
function to_seconds(ts) {
  return days_from_civil(substr(ts, 1, 4) + 0, substr(ts, 6, 2) + 0, substr(ts, 9, 2) + 0) * 86400 \
    + substr(ts, 12, 2) * 3600 + substr(ts, 15, 2) * 60 + substr(ts, 18, 2) + substr(ts, 21, 3) / 1000
}
function json_string(s,    out, i, c) {
  out = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c == "\\") out = out "\\\\"
    else if (c == "\"") out = out "\\\""
    else if (c == "\t") out = out "\\t"
    else if (c == "\177") out = out "\\u007f"
    else if (c < " ") out = out sprintf("\\u%04x", index(CTRL, c))
    else out = out c
  }
  return "\"" out "\""
}
function is_uint(v) { return v ~ /^[0-9]+$/ }
function is_num(v) { return v ~ /^[0-9]+(\.[0-9]+)?$/ }
function uptime_seconds(u,    parts) {
  split(u, parts, " ")
  return parts[1] * 3600 + parts[2] * 60 + parts[3] * 1
}
# prefix_of(line, tag): sets TS and PID from "YYYY-MM-DD HH:MM:SS,mmm LEVEL concurrency[PID]: "
function parse_prefix(line, tag,    head, open_at, close_at) {
  TS = ""; PID = ""
  head = substr(line, 1, index(line, tag) - 1)
  if (head ~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]/) TS = substr(head, 1, 23)
  open_at = index(head, "concurrency[")
  if (open_at) {
    head = substr(head, open_at + 12)
    close_at = index(head, "]")
    if (close_at > 1 && substr(head, 1, close_at - 1) ~ /^[0-9]+$/) PID = substr(head, 1, close_at - 1)
  }
}
BEGIN {
  CTRL = ""
  for (i = 1; i < 32; i++) CTRL = CTRL sprintf("%c", i)
  found = 0; ep_found = 0; sys_found = 0
}
NR == 1 && skip_first { next }
{
  sub(/\r$/, "")
  if ($0 == eof_mark) next
  if (index($0, eof_mark)) next   # the half-written last line
}
index($0, "[CONCURRENCY] ") {
  rest = substr($0, index($0, "[CONCURRENCY] ") + 14)
  n = split(rest, fields, / \| /)
  a = ""; p = ""; pk = ""; t = ""; f = ""; q = ""; u = ""
  for (i = 1; i <= n; i++) {
    k = fields[i]; v = fields[i]
    sub(/: .*/, "", k); sub(/^[^:]*: /, "", v)
    if (k == "Active" && v ~ /^[0-9]+\/[0-9]+$/) { a = v; sub(/\/.*/, "", a); p = v; sub(/.*\//, "", p) }
    else if (k == "Peak" && is_uint(v)) pk = v
    else if (k == "Total" && is_uint(v)) t = v
    else if (k == "Failed" && is_uint(v)) f = v
    else if (k == "Queue" && is_uint(v)) q = v
    else if (k == "Uptime" && v ~ /^[0-9]+h [0-9]+m [0-9]+s$/) u = v
  }
  if (a == "" || t == "" || f == "" || q == "" || u == "") next   # garbage or torn: not a metrics line
  parse_prefix($0, "[CONCURRENCY] ")
  if (found && PID == cpid && TS != "" && cts != "") prev_ts = cts
  else if (!found || PID != cpid) prev_ts = ""
  found = 1
  c_active = a; c_peak = (pk != "" ? pk : p); c_total = t; c_failed = f; c_queue = q; c_uptime = u
  cts = TS; cpid = PID
  next
}
index($0, "[ENDPOINTS] ") {
  rest = substr($0, index($0, "[ENDPOINTS] ") + 12)
  n = split(rest, fields, / \| /)
  list = ""; count = 0; ok = 1
  for (i = 1; i <= n; i++) {
    if (fields[i] !~ /^[!-{}~]+: [0-9]+$/) { ok = 0; break }   # printable ASCII names only
    name = fields[i]; v = fields[i]
    sub(/: [0-9]+$/, "", name); sub(/.*: /, "", v)
    count++; ep_name[count] = name; ep_val[count] = v
  }
  if (!ok || count == 0) next
  parse_prefix($0, "[ENDPOINTS] ")
  ep_pid = PID; ep_count = count; ep_found = 1
  for (i = 1; i <= count; i++) { ep_names[PID, i] = ep_name[i]; ep_vals[PID, i] = ep_val[i] }
  ep_counts[PID] = count
  next
}
index($0, "[SYSTEM] ") {
  rest = substr($0, index($0, "[SYSTEM] ") + 9)
  if (rest !~ /^CPU: [0-9]+(\.[0-9]+)?% \| Memory: [0-9]+(\.[0-9]+)?MB \| Threads: [0-9]+$/) next
  parse_prefix($0, "[SYSTEM] ")
  split(rest, parts, / \| /)
  cpu = parts[1]; sub(/^CPU: /, "", cpu); sub(/%$/, "", cpu)
  mem = parts[2]; sub(/^Memory: /, "", mem); sub(/MB$/, "", mem)
  thr = parts[3]; sub(/^Threads: /, "", thr)
  sys_cpu[PID] = cpu; sys_mem[PID] = mem; sys_thr[PID] = thr; sys_seen[PID] = 1
  next
}
END {
  if (!found) exit 1
  # Age of the newest metrics: from the line timestamp, else the file modification time.
  if (cts != "" && now_local != "") age = to_seconds(now_local) - to_seconds(cts)
  else age = now_epoch - mtime
  if (age < 0) age = 0
  interval = env_interval
  if (interval == "" && prev_ts != "" && cts != "") interval = to_seconds(cts) - to_seconds(prev_ts)
  if (interval == "" || interval <= 0) interval = 2
  stale = (age > 3 * interval)
  if (cts != "") { stamp = substr(cts, 1, 10) "T" substr(cts, 12, 8) tz } else stamp = mtime_iso
  has_ep = ((cpid, 1) in ep_names)
  has_sys = (cpid in sys_seen)

  if (mode == "json") {
    printf "{\"timestamp\": %s, \"active\": %d, \"peak\": %d, \"total_requests\": %d, \"failed_requests\": %d, ", json_string(stamp), c_active, c_peak, c_total, c_failed
    printf "\"cancelled_requests\": null, \"queue_depth\": %d, \"uptime\": %s, \"uptime_seconds\": %d, ", c_queue, json_string(c_uptime), uptime_seconds(c_uptime)
    printf "\"endpoints\": {"
    if (has_ep) for (i = 1; i <= ep_counts[cpid]; i++) printf "%s%s: %d", (i > 1 ? ", " : ""), json_string(ep_names[cpid, i]), ep_vals[cpid, i]
    printf "}, \"system\": "
    if (has_sys) printf "{\"cpu_percent\": %s, \"memory_mb\": %s, \"threads\": %d}", sys_cpu[cpid] + 0, sys_mem[cpid] + 0, sys_thr[cpid]
    else printf "{\"cpu_percent\": null, \"memory_mb\": null, \"threads\": null}"
    printf ", \"pid\": %s, \"log_file\": %s, \"stale\": %s, \"age_seconds\": %d}\n", (cpid != "" ? cpid : "null"), json_string(log_file), (stale ? "true" : "false"), age
    exit 0
  }
  if (mode == "check") {
    ratio = (c_total > 0 ? c_failed / c_total : 0)
    state = "OK"; why = ""
    if (max_queue != "" && c_queue + 0 > max_queue + 0) { state = "WARNING"; why = why sprintf("queue %d > %d; ", c_queue, max_queue) }
    if (max_ratio != "" && ratio > max_ratio + 0) { state = "WARNING"; why = why sprintf("failed ratio %.3f > %s; ", ratio, max_ratio) }
    if (stale) { state = "CRITICAL"; why = why sprintf("metrics stale (%ds old); ", age) }
    printf "UVICORN %s - %sactive %d, peak %d, queue %d, total %d, failed %d (%.1f%%), age %ds | active=%d queue=%d total=%dc failed=%dc\n", state, why, c_active, c_peak, c_queue, c_total, c_failed, ratio * 100, age, c_active, c_queue, c_total, c_failed
    exit (state == "OK" ? 10 : state == "WARNING" ? 11 : 12)
  }
  bar = "════════════════════════════════════════════════════════"
  print "╔" bar "╗"
  print "║  Uvicorn Concurrency Monitor"
  print "╠" bar "╣"
  printf "║  Active Concurrent:  %d\n", c_active
  printf "║  Peak Concurrent:    %d\n", c_peak
  printf "║  Total Requests:     %d\n", c_total
  printf "║  Failed Requests:    %d\n", c_failed
  printf "║  Queue Depth:        %d\n", c_queue
  printf "║  Uptime:             %s\n", c_uptime
  if (stale) printf "║  STALE:              newest metrics are %ds old (is the proxy running?)\n", age
  print "╠" bar "╣"
  print "║  Active Endpoints:"
  shown = 0
  if (has_ep) for (i = 1; i <= ep_counts[cpid]; i++) if (ep_vals[cpid, i] > 0) { printf "║    • %s: %d\n", ep_names[cpid, i], ep_vals[cpid, i]; shown++ }
  if (!shown) print "║    (none)"
  print "╠" bar "╣"
  print "║  System Metrics:"
  if (has_sys) printf "║    CPU: %s%% | Memory: %s MB | Threads: %d\n", sys_cpu[cpid], sys_mem[cpid], sys_thr[cpid]
  else print "║    (no [SYSTEM] line yet)"
  print "╚" bar "╝"
}
'

# render: print the snapshot in MODE; returns 1 when there are no metrics (after saying so).
render() {
  if [[ ! -e "${LOG}" && ! -e "${LOG}.1" ]]; then
    no_metrics "log file ${LOG} does not exist (is the proxy writing to another LOG_FILE? use --log FILE)"
    return 1
  fi
  if [[ -e "${LOG}" && ! -r "${LOG}" ]]; then
    no_metrics "log file ${LOG} is not readable"
    return 1
  fi
  SOURCE=""
  WINDOW=0
  WINDOW_IS_WHOLE=1
  if ! choose_source; then
    no_metrics "No metrics found in ${LOG}"
    return 1
  fi
  local tz now_local mtime mtime_iso status=0
  tz="$(date +%z)"
  if [[ "${tz}" == "+0000" ]]; then tz="Z"; else tz="${tz:0:3}:${tz:3:2}"; fi
  now_local="$(date '+%Y-%m-%d %H:%M:%S')"
  mtime="$(mtime_of "${SOURCE}")"
  mtime_iso="$(date -u -r "${SOURCE}" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || true)"
  read_window "${SOURCE}" "${WINDOW}" | awk \
    -v mode="${MODE}" -v eof_mark="${EOF_MARK}" -v skip_first="$((1 - WINDOW_IS_WHOLE))" \
    -v now_local="${now_local}" -v now_epoch="$(date +%s)" -v mtime="${mtime}" -v mtime_iso="${mtime_iso}" \
    -v tz="${tz}" -v env_interval="${MONITOR_UPDATE_INTERVAL:-}" -v log_file="${SOURCE}" \
    -v max_queue="${MAX_QUEUE}" -v max_ratio="${MAX_FAILED_RATIO}" \
    "${AWK_PROGRAM}" || status=$?
  case "${status}" in
    0) return 0 ;;
    10 | 11 | 12) CHECK_STATUS=$((status - 10)); return 0 ;;
    *) no_metrics "No metrics found in ${LOG}"; return 1 ;;
  esac
}

no_metrics() {
  local message="$1"
  if [[ "${MODE}" == "check" ]]; then
    echo "UVICORN UNKNOWN - ${message}"
    return 0
  fi
  err "${message}"
  if [[ "${message}" == "No metrics found"* ]]; then
    cat >&2 <<EOF
  - metric lines are written only with DEBUG=true (./run_proxy.sh run --debug)
  - generate traffic: curl http://localhost:9999/health
  - then try again: ./scripts/monitor_uvicorn.sh
EOF
  fi
}

restore_terminal() {
  printf '\033[?25h\033[?1049l'
}

watch_loop() {
  if [[ -t 1 ]]; then
    trap 'restore_terminal; exit 0' INT TERM
    trap restore_terminal EXIT
    printf '\033[?1049h\033[?25l'
    while :; do
      local frame
      frame="$(render 2>&1 || true)"
      printf '\033[H\033[2J%s\n\n  %s  (every %ss, Ctrl-C to quit)\n' "${frame}" "$(date '+%H:%M:%S')" "${INTERVAL}"
      sleep "${INTERVAL}"
    done
  fi
  trap 'exit 0' INT TERM
  while :; do
    if [[ "${MODE}" == "json" ]]; then
      render 2>/dev/null || printf '{"timestamp": "%s", "error": "no metrics", "log_file": "%s"}\n' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${LOG//\"/\\\"}"
    else
      printf -- '--- %s ---\n' "$(date '+%Y-%m-%d %H:%M:%S')"
      render 2>&1 || true
    fi
    sleep "${INTERVAL}"
  done
}

main() {
  parse_args "$@"
  CHECK_STATUS=3
  if [[ "${WATCH}" == 1 ]]; then
    watch_loop
  fi
  if ! render; then
    [[ "${MODE}" == "check" ]] && exit 3
    exit 1
  fi
  if [[ "${MODE}" == "check" ]]; then
    exit "${CHECK_STATUS}"
  fi
}

main "$@"
