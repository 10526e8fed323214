#!/usr/bin/env bash
# Summary: Show the proxy's concurrency metrics from its log: a box, JSON, a live view or a check
# Usage: monitor_uvicorn.sh [--json] [--watch [--interval S]] [--check [thresholds]] [--log FILE]...
#
# Reads the newest [CONCURRENCY], [ENDPOINTS], [SYSTEM] and [LATENCY] lines of the log (only its
# end, so the time taken does not grow with the log's size) and prints them. Lines of several
# workers (pids in the prefix) and of several logs (--log A --log B) are summed: Workers: N.
#
# Options:
#   -j, --json               One JSON object (the keys of GET /monitor, plus log_file and stale)
#   -w, --watch              Redraw every interval until Ctrl-C; when stdout is not a terminal,
#                            append one timestamped snapshot per interval (JSON Lines with --json)
#   -i, --interval S         Seconds between redraws in --watch (default 2)
#   -l, --log FILE           Log to read (default: $LOG_FILE, else logs/proxy.log of this project);
#                            repeat it to add up several proxies' logs
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
readonly SOURCE_MARK="@@monitor-uvicorn-source@@"

MODE="box"
WATCH=0
INTERVAL=2
LOG=""
LOGS=()
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
            LOGS+=("$2")
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
  if [[ ${#LOGS[@]} -eq 0 ]]; then
    LOG="${LOG_FILE:-logs/proxy.log}"
    # A relative LOG_FILE is relative to the project, as it is for the proxy.
    [[ "${LOG}" == /* ]] || LOG="${SCRIPT_DIR}/../${LOG}"
    local dir
    if dir="$(cd "$(dirname "${LOG}")" 2>/dev/null && pwd)"; then
      LOG="${dir}/$(basename "${LOG}")"
    fi
    LOGS=("${LOG}")
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

# The parser and formatter: POSIX awk (mawk and gawk), one pass over the windows of every log.
# Lines are grouped by (log, writer pid): the newest lines of each live group are summed, so
# several workers of one proxy, and several proxies (--log A --log B), add up to the whole.
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
function uptime_seconds(u,    parts) {
  split(u, parts, " ")
  return parts[1] * 3600 + parts[2] * 60 + parts[3] * 1
}
# parse_prefix(line, tag): sets TS and PID from "YYYY-MM-DD HH:MM:SS,mmm LEVEL concurrency[PID]: "
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
  G = src SUBSEP PID
}
function ms_value(v) { sub(/ms$/, "", v); return v }
function json_ms(v) { return (v == "" || v == "-") ? "null" : v + 0 }
BEGIN {
  CTRL = ""
  for (i = 1; i < 32; i++) CTRL = CTRL sprintf("%c", i)
  ngroups = 0; nsrc = 0; src = 0
  MS = "([0-9]+(\\.[0-9]+)?ms|-)"
  LAT_RE = "^p50: " MS " \\| p95: " MS " \\| p99: " MS " \\| TTFT p50: " MS " \\| TTFT p95: " MS "$"
}
index($0, source_mark) == 1 {
  split($0, head, " ")
  src = head[2]; skip = head[3]; src_mtime[src] = head[4]
  path = $0; sub(/^[^ ]+ [^ ]+ [^ ]+ [^ ]+ /, "", path); src_path[src] = path
  nsrc++
  next
}
skip { skip = 0; next }
{
  sub(/\r$/, "")
  if (index($0, eof_mark)) next   # the end mark, alone or glued to a half-written last line
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
  if (!(G in g_seen)) { g_seen[G] = 1; ngroups++; g_list[ngroups] = G; g_src[G] = src; g_pid[G] = PID }
  if (TS != "" && g_ts[G] != "") g_prev[G] = g_ts[G]
  g_active[G] = a; g_peak[G] = (pk != "" ? pk : p); g_total[G] = t; g_failed[G] = f; g_queue[G] = q
  g_uptime[G] = u; g_ts[G] = TS
  if (TS != "" && (!(src in src_newest) || TS > src_newest[src])) src_newest[src] = TS
  next
}
index($0, "[ENDPOINTS] ") {
  rest = substr($0, index($0, "[ENDPOINTS] ") + 12)
  n = split(rest, fields, / \| /)
  count = 0; ok = 1
  for (i = 1; i <= n; i++) {
    if (fields[i] !~ /^[!-{}~]+: [0-9]+$/) { ok = 0; break }   # printable ASCII names only
    name = fields[i]; v = fields[i]
    sub(/: [0-9]+$/, "", name); sub(/.*: /, "", v)
    count++; ep_name[count] = name; ep_val[count] = v
  }
  if (!ok || count == 0) next
  parse_prefix($0, "[ENDPOINTS] ")
  for (i = 1; i <= count; i++) { ep_names[G, i] = ep_name[i]; ep_vals[G, i] = ep_val[i] }
  ep_counts[G] = count
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
  sys_cpu[G] = cpu; sys_mem[G] = mem; sys_thr[G] = thr
  next
}
index($0, "[LATENCY] ") {
  rest = substr($0, index($0, "[LATENCY] ") + 10)
  if (rest !~ LAT_RE) next
  parse_prefix($0, "[LATENCY] ")
  n = split(rest, parts, / \| /)
  for (i = 1; i <= n; i++) { v = parts[i]; sub(/.*: /, "", v); lat[G, i] = ms_value(v) }
  lat_seen[G] = 1
  next
}
END {
  if (!ngroups) exit 1
  interval_known = (env_interval != "")
  # Each log: the age of its newest metrics; a group (writer pid) is live when its newest line is
  # within 3 intervals of its log'"'"'s newest (an older pid is a worker that is gone).
  age = 0; live = 0; stale = 0; any_ts = 0; newest_ts = ""
  for (i = 1; i <= ngroups; i++) {
    G = g_list[i]; s = g_src[G]
    interval = env_interval
    if (interval == "" && g_prev[G] != "" && g_ts[G] != "") interval = to_seconds(g_ts[G]) - to_seconds(g_prev[G])
    if (interval == "" || interval <= 0) interval = 2
    if (g_ts[G] != "") {
      any_ts = 1
      if (newest_ts == "" || g_ts[G] > newest_ts) newest_ts = g_ts[G]
      g_age = to_seconds(now_local) - to_seconds(g_ts[G])
      if (to_seconds(src_newest[s]) - to_seconds(g_ts[G]) > 3 * interval) continue   # a gone worker
    } else g_age = now_epoch - src_mtime[s]
    if (g_age < 0) g_age = 0
    if (g_age > 3 * interval) stale = 1
    if (g_age > age) age = g_age
    live++; L[live] = G
  }
  # Sums over the live groups (peak: the sum of their peaks, an upper bound of the true peak).
  active = 0; peak = 0; total = 0; failed = 0; queue = 0; up = 0; uptime = ""
  ne = 0; has_sys = 0; cpu = 0; mem = 0; thr = 0; has_lat = 0
  for (i = 1; i <= 5; i++) lat_max[i] = ""
  pids = ""
  for (j = 1; j <= live; j++) {
    G = L[j]
    active += g_active[G]; peak += g_peak[G]; total += g_total[G]; failed += g_failed[G]; queue += g_queue[G]
    if (uptime_seconds(g_uptime[G]) >= up) { up = uptime_seconds(g_uptime[G]); uptime = g_uptime[G] }
    for (i = 1; i <= ep_counts[G]; i++) {
      name = ep_names[G, i]
      if (!(name in ep_sum)) { ne++; ep_order[ne] = name; ep_sum[name] = 0 }
      ep_sum[name] += ep_vals[G, i]
    }
    if (G in sys_cpu) { has_sys = 1; cpu += sys_cpu[G]; mem += sys_mem[G]; thr += sys_thr[G] }
    if (G in lat_seen) {
      has_lat = 1
      for (i = 1; i <= 5; i++) if (lat[G, i] != "-" && (lat_max[i] == "" || lat[G, i] + 0 > lat_max[i] + 0)) lat_max[i] = lat[G, i]
    }
    pids = pids (pids == "" ? "" : ", ") (g_pid[G] != "" ? g_pid[G] : "null")
  }
  workers = live
  if (newest_ts != "") stamp = substr(newest_ts, 1, 10) "T" substr(newest_ts, 12, 8) tz; else stamp = mtime_iso

  if (mode == "json") {
    printf "{\"timestamp\": %s, \"active\": %d, \"peak\": %d, \"total_requests\": %d, \"failed_requests\": %d, ", json_string(stamp), active, peak, total, failed
    printf "\"cancelled_requests\": null, \"queue_depth\": %d, \"uptime\": %s, \"uptime_seconds\": %d, ", queue, json_string(uptime), up
    printf "\"endpoints\": {"
    for (i = 1; i <= ne; i++) printf "%s%s: %d", (i > 1 ? ", " : ""), json_string(ep_order[i]), ep_sum[ep_order[i]]
    printf "}, \"system\": "
    if (has_sys) printf "{\"cpu_percent\": %s, \"memory_mb\": %s, \"threads\": %d}", cpu + 0, mem + 0, thr
    else printf "{\"cpu_percent\": null, \"memory_mb\": null, \"threads\": null}"
    if (has_lat) {
      printf ", \"latency_ms\": {\"p50\": %s, \"p95\": %s, \"p99\": %s}", json_ms(lat_max[1]), json_ms(lat_max[2]), json_ms(lat_max[3])
      printf ", \"ttft_ms\": {\"p50\": %s, \"p95\": %s, \"p99\": null}", json_ms(lat_max[4]), json_ms(lat_max[5])
    } else printf ", \"latency_ms\": null, \"ttft_ms\": null"
    printf ", \"workers\": %d, \"pid\": %s, \"pids\": [%s]", workers, (workers == 1 && g_pid[L[1]] != "" ? g_pid[L[1]] : "null"), pids
    printf ", \"log_file\": %s, \"log_files\": [", json_string(src_path[1])
    for (i = 1; i <= nsrc; i++) printf "%s%s", (i > 1 ? ", " : ""), json_string(src_path[i])
    printf "], \"stale\": %s, \"age_seconds\": %d}\n", (stale ? "true" : "false"), age
    exit 0
  }
  if (mode == "check") {
    ratio = (total > 0 ? failed / total : 0)
    state = "OK"; why = ""
    if (max_queue != "" && queue + 0 > max_queue + 0) { state = "WARNING"; why = why sprintf("queue %d > %d; ", queue, max_queue) }
    if (max_ratio != "" && ratio > max_ratio + 0) { state = "WARNING"; why = why sprintf("failed ratio %.3f > %s; ", ratio, max_ratio) }
    if (stale) { state = "CRITICAL"; why = why sprintf("metrics stale (%ds old); ", age) }
    printf "UVICORN %s - %sactive %d, peak %d, queue %d, total %d, failed %d (%.1f%%), age %ds | active=%d queue=%d total=%dc failed=%dc\n", state, why, active, peak, queue, total, failed, ratio * 100, age, active, queue, total, failed
    exit (state == "OK" ? 10 : state == "WARNING" ? 11 : 12)
  }
  bar = "════════════════════════════════════════════════════════"
  print "╔" bar "╗"
  print "║  Uvicorn Concurrency Monitor"
  print "╠" bar "╣"
  if (workers > 1) printf "║  Workers:            %d\n", workers
  printf "║  Active Concurrent:  %d\n", active
  printf "║  Peak Concurrent:    %d%s\n", peak, (workers > 1 ? " (sum of the workers'"'"' peaks)" : "")
  printf "║  Total Requests:     %d\n", total
  printf "║  Failed Requests:    %d\n", failed
  printf "║  Queue Depth:        %d\n", queue
  printf "║  Uptime:             %s\n", uptime
  if (stale) printf "║  STALE:              newest metrics are %ds old (is the proxy running?)\n", age
  print "╠" bar "╣"
  print "║  Active Endpoints:"
  shown = 0
  for (i = 1; i <= ne; i++) if (ep_sum[ep_order[i]] > 0) { printf "║    • %s: %d\n", ep_order[i], ep_sum[ep_order[i]]; shown++ }
  if (!shown) print "║    (none)"
  print "╠" bar "╣"
  print "║  System Metrics:"
  if (has_sys) printf "║    CPU: %s%% | Memory: %s MB | Threads: %d\n", (workers > 1 ? sprintf("%.1f", cpu) : cpu), (workers > 1 ? sprintf("%.1f", mem) : mem), thr
  else print "║    (no [SYSTEM] line yet)"
  if (has_lat) {
    print "╠" bar "╣"
    printf "║  Latency (last 5 min%s):\n", (workers > 1 ? ", the slowest worker" : "")
    printf "║    p50: %s | p95: %s | p99: %s | TTFT p50: %s | TTFT p95: %s\n", fmt_ms(lat_max[1]), fmt_ms(lat_max[2]), fmt_ms(lat_max[3]), fmt_ms(lat_max[4]), fmt_ms(lat_max[5])
  }
  print "╚" bar "╝"
}
function fmt_ms(v) { return v == "" ? "-" : v "ms" }
'

# emit_windows: every log's window, each after a source line; sets FOUND_ANY. Logs without
# metrics are skipped (the others still count).
emit_windows() {
  local index=0 log
  for log in "${LOGS[@]}"; do
    index=$((index + 1))
    LOG="${log}"
    SOURCE=""
    choose_source || continue
    printf '%s %d %d %s %s\n' "${SOURCE_MARK}" "${index}" "$((1 - WINDOW_IS_WHOLE))" "$(mtime_of "${SOURCE}")" "${SOURCE}"
    read_window "${SOURCE}" "${WINDOW}"
  done
}

# render: print the snapshot in MODE; returns 1 when there are no metrics (after saying so).
render() {
  local log
  for log in "${LOGS[@]}"; do
    if [[ ! -e "${log}" && ! -e "${log}.1" ]]; then
      no_metrics "log file ${log} does not exist (is the proxy writing to another LOG_FILE? use --log FILE)"
      return 1
    fi
    if [[ -e "${log}" && ! -r "${log}" ]]; then
      no_metrics "log file ${log} is not readable"
      return 1
    fi
  done
  local tz now_local mtime_iso status=0
  tz="$(date +%z)"
  if [[ "${tz}" == "+0000" ]]; then tz="Z"; else tz="${tz:0:3}:${tz:3:2}"; fi
  now_local="$(date '+%Y-%m-%d %H:%M:%S')"
  mtime_iso="$(date -u -r "${LOGS[0]}" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)"
  emit_windows | awk \
    -v mode="${MODE}" -v eof_mark="${EOF_MARK}" -v source_mark="${SOURCE_MARK}" \
    -v now_local="${now_local}" -v now_epoch="$(date +%s)" -v mtime_iso="${mtime_iso}" \
    -v tz="${tz}" -v env_interval="${MONITOR_UPDATE_INTERVAL:-}" \
    -v max_queue="${MAX_QUEUE}" -v max_ratio="${MAX_FAILED_RATIO}" \
    "${AWK_PROGRAM}" || status=$?
  case "${status}" in
    0) return 0 ;;
    10 | 11 | 12) CHECK_STATUS=$((status - 10)); return 0 ;;
    *) no_metrics "No metrics found in ${LOGS[*]}"; return 1 ;;
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
