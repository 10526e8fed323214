#!/usr/bin/env bash
# Summary: Set up, run and manage the LLM concurrency proxy (and its built-in simulator upstream)
# Usage: run_proxy.sh <command> [options]
#
# Commands:
#   setup [--dev]        Make .venv and install requirements.txt (--dev: requirements-dev.txt);
#                        quick when nothing changed
#   run                  Run in the foreground; Ctrl-C or SIGTERM stops proxy and simulator
#   start                Start in the background, wait for /health, print URL, pid and upstream
#   stop                 Stop gracefully (in-flight requests and streams finish, up to
#                        STOP_TIMEOUT seconds, default 30), then SIGKILL; stop the simulator
#   restart              stop, then start with the settings of the last start unless given anew
#   status               State, pid, uptime, URL, upstream, health, then the monitor box
#   logs [--metrics] [--no-follow]
#                        Follow LOG_FILE (tail -F, survives rotation); --metrics: metric lines only
#   help                 Show this help
#
# Options (each sets and exports the environment variable in brackets):
#   --debug                  Write metric lines to the log            [DEBUG=true]
#   --monitor-interval N     Seconds between metric lines             [MONITOR_UPDATE_INTERVAL]
#   --host HOST              Bind address (default 127.0.0.1)         [PROXY_HOST]
#   --port PORT              Port (default 9999)                      [PROXY_PORT]
#   --upstream URL           LLM server base URL; unset: simulator    [UPSTREAM_URL]
#   --workers N              uvicorn worker processes                 [WORKERS]
#   --log-file FILE          Log file (default logs/proxy.log)        [LOG_FILE]
#   --log-level LEVEL        critical|error|warning|info|debug|trace  [LOG_LEVEL]
#   --max-concurrent N       /v1/* requests admitted at once          [MAX_CONCURRENT_REQUESTS]
#   -h, --help               Show this help
# Other settings are environment variables only: see README.md. PID_FILE (default
# logs/proxy.pid) names the instance; relative paths are relative to the project folder.
#
# Exit codes:
#   0  success (start: also when already running; stop: also when not running)
#   1  failure (bad configuration value, set-up failed, port in use, did not start)
#   2  usage error (unknown command or flag, bad flag value)
#   3  status: not running
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
readonly PROJECT_DIR
readonly PROG="run_proxy"
readonly VENV="${PROJECT_DIR}/.venv"
readonly PYTHON="${VENV}/bin/python"
readonly HEALTH_TIMEOUT=30

SIM_PID=""
PROXY_PID=""

err() {
  printf '%s: %s\n' "${PROG}" "$*" >&2
}

die() {
  err "$@"
  exit 1
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

usage_error() {
  err "$1"
  usage >&2
  exit 2
}

# -- set-up -------------------------------------------------------------------

find_python() {
  local candidate
  for candidate in python3 python; do
    if command -v "${candidate}" >/dev/null 2>&1 &&
      "${candidate}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      command -v "${candidate}"
      return 0
    fi
  done
  return 1
}

requirements_hash() {
  local file="$1"
  local python_version
  python_version="$("${PYTHON}" -c 'import sys; print(sys.version)' 2>/dev/null || true)"
  {
    printf '%s\n' "${python_version}"
    cat "${PROJECT_DIR}/requirements.txt" "${PROJECT_DIR}/${file}"
  } | sha256sum | cut -d' ' -f1
}

cmd_setup() {
  local file="requirements.txt"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --dev) file="requirements-dev.txt" ;;
      -h | --help) usage; return 0 ;;
      *) usage_error "setup: unknown option '$1'" ;;
    esac
    shift
  done
  local stamp="${VENV}/.stamp-${file%.txt}"
  if [[ -x "${PYTHON}" && -f "${stamp}" && "$(cat "${stamp}")" == "$(requirements_hash "${file}")" ]]; then
    return 0
  fi
  local python
  python="$(find_python)" || die "python3 (3.11 or newer) not found: install it and retry"
  if [[ ! -x "${PYTHON}" ]]; then
    err "creating ${VENV}"
    "${python}" -m venv "${VENV}" >/dev/null 2>&1 ||
      die "could not create ${VENV} with ${python} -m venv (on Debian: apt-get install python3-venv)"
  fi
  err "installing ${file} into .venv (log: .venv/pip.log)"
  if ! "${PYTHON}" -m pip install --disable-pip-version-check -r "${PROJECT_DIR}/${file}" >"${VENV}/pip.log" 2>&1; then
    die "installing ${file} failed: see ${VENV}/pip.log ($(grep -m1 -i 'error' "${VENV}/pip.log" || echo 'no error line'))"
  fi
  requirements_hash "${file}" >"${stamp}"
  if [[ "${file}" == "requirements-dev.txt" ]]; then
    # The dev set includes the runtime set.
    requirements_hash requirements.txt >"${VENV}/.stamp-requirements"
  fi
}

# -- options ------------------------------------------------------------------

check_uint() {
  local flag="$1" value="$2"
  [[ "${value}" =~ ^[0-9]+$ && "${value}" -ge 1 ]] || usage_error "${flag}: '${value}' is not a positive whole number"
}

check_port() {
  local flag="$1" value="$2"
  [[ "${value}" =~ ^[0-9]+$ && "${value}" -ge 1 && "${value}" -le 65535 ]] ||
    usage_error "${flag}: '${value}' is not a port (1-65535)"
}

# parse_options ARGS...: export the variables the flags set.
parse_options() {
  while [[ $# -gt 0 ]]; do
    local flag="$1"
    case "${flag}" in
      --debug) export DEBUG=true; shift; continue ;;
      -h | --help) usage; exit 0 ;;
      --monitor-interval | --host | --port | --upstream | --workers | --log-file | --log-level | --max-concurrent)
        [[ $# -ge 2 ]] || usage_error "${flag} needs a value"
        ;;
      *) usage_error "unknown option '${flag}'" ;;
    esac
    local value="$2"
    case "${flag}" in
      --monitor-interval)
        if ! [[ "${value}" =~ ^[0-9]*\.?[0-9]+$ ]] || ! awk -v v="${value}" 'BEGIN { exit !(v > 0) }'; then
          usage_error "--monitor-interval: '${value}' is not a positive number of seconds"
        fi
        export MONITOR_UPDATE_INTERVAL="${value}"
        ;;
      --host)
        [[ -n "${value}" ]] || usage_error "--host needs a value"
        export PROXY_HOST="${value}"
        ;;
      --port) check_port "${flag}" "${value}"; export PROXY_PORT="${value}" ;;
      --upstream)
        [[ "${value}" =~ ^https?://[^/]+ ]] || usage_error "--upstream: '${value}' is not an http:// or https:// URL"
        export UPSTREAM_URL="${value}"
        ;;
      --workers) check_uint "${flag}" "${value}"; export WORKERS="${value}" ;;
      --log-file)
        [[ -n "${value}" ]] || usage_error "--log-file needs a value"
        export LOG_FILE="${value}"
        ;;
      --log-level)
        case "${value}" in
          critical | error | warning | info | debug | trace) export LOG_LEVEL="${value}" ;;
          *) usage_error "--log-level: '${value}' is not one of critical, error, warning, info, debug, trace" ;;
        esac
        ;;
      --max-concurrent) check_uint "${flag}" "${value}"; export MAX_CONCURRENT_REQUESTS="${value}" ;;
    esac
    shift 2
  done
}

# Validate the whole environment with the proxy's own rules (one line naming the bad variable).
check_config() {
  local message
  if ! message="$(cd "${PROJECT_DIR}" && "${PYTHON}" -m app.config 2>&1)"; then
    die "${message#config: }"
  fi
}

# -- processes ------------------------------------------------------------------

# Settings remembered from the last start (restart and status reuse them). Never secrets.
readonly STATE_KEYS="PROXY_HOST PROXY_PORT UPSTREAM_URL SIMULATOR_PORT LOG_FILE LOG_LEVEL DEBUG MONITOR_UPDATE_INTERVAL WORKERS MAX_CONCURRENT_REQUESTS"

# abs_path PATH: PATH made absolute against the project folder (where the proxy runs).
abs_path() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "${PROJECT_DIR}/$1" ;;
  esac
}

pid_file() {
  abs_path "${PID_FILE:-logs/proxy.pid}"
}

sim_pid_file() {
  local file
  file="$(pid_file)"
  printf '%s\n' "${file%.pid}.simulator.pid"
}

state_file() {
  local file
  file="$(pid_file)"
  printf '%s\n' "${file%.pid}.state"
}

log_file() {
  abs_path "${LOG_FILE:-logs/proxy.log}"
}

# load_state [override]: export the settings remembered from the last start — those not already
# set, or all of them with `override` (status and logs describe the instance that runs, whatever
# this shell has). Read as data, never sourced.
load_state() {
  local override="${1:-}" file key value
  file="$(state_file)"
  [[ -r "${file}" ]] || return 0
  while IFS='=' read -r key value; do
    [[ " ${STATE_KEYS} STARTED_AT " == *" ${key} "* ]] || continue
    if [[ -n "${override}" || -z "${!key+set}" ]]; then
      export "${key}=${value}"
    fi
  done <"${file}"
}

write_state() {
  local file key
  file="$(state_file)"
  {
    for key in ${STATE_KEYS}; do
      if [[ -n "${!key+set}" ]]; then
        printf '%s=%s\n' "${key}" "${!key}"
      fi
    done
    printf 'STARTED_AT=%s\n' "$(date +%s)"
  } >"${file}"
  chmod 644 "${file}"
}

# cmdline PID: the process's command line, arguments separated by spaces ("" when gone).
cmdline() {
  if [[ -r "/proc/$1/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
  else
    ps -p "$1" -o args= 2>/dev/null || true
  fi
}

# owned_pid FILE MODULE: print the pid in FILE if that process is alive and is our `python -m MODULE`.
# A pid reused by another program is never ours: its command line is checked.
owned_pid() {
  local file="$1" module="$2" pid=""
  [[ -r "${file}" ]] || return 1
  read -r pid <"${file}" || true
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  kill -0 "${pid}" 2>/dev/null || return 1
  local line
  line="$(cmdline "${pid}")"
  if [[ "${module}" == "app" ]]; then
    # `python -m app` replaces itself with `python -m uvicorn app.main:app ...`
    [[ "${line}" == "${PYTHON} -m app "* || "${line}" == "${PYTHON} -m uvicorn app.main:app "* ]] || return 1
  else
    [[ "${line}" == "${PYTHON} -m ${module} "* ]] || return 1
  fi
  printf '%s\n' "${pid}"
}

# http_status HOST PORT PATH: print the HTTP status of a GET, using bash's /dev/tcp (no curl needed).
http_status() {
  local host="$1" port="$2" path="$3" line=""
  [[ "${host}" == "0.0.0.0" || "${host}" == "::" ]] && host="127.0.0.1"
  {
    exec 3<>"/dev/tcp/${host}/${port}" &&
      printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "${path}" "${host}" >&3 &&
      IFS= read -r -t 3 line <&3
  } 2>/dev/null || true
  exec 3>&- || true
  line="${line%$'\r'}"
  [[ "${line}" =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]] && printf '%s\n' "${BASH_REMATCH[1]}"
  return 0
}

port_in_use() {
  local host="$1" port="$2"
  [[ "${host}" == "0.0.0.0" || "${host}" == "::" ]] && host="127.0.0.1"
  { exec 4<>"/dev/tcp/${host}/${port}"; } 2>/dev/null || return 1
  exec 4>&- || true
  return 0
}

# wait_healthy PID HOST PORT NAME: until /health answers 200; fail if PID dies or time runs out.
wait_healthy() {
  local pid="$1" host="$2" port="$3" name="$4"
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "${pid}" 2>/dev/null || return 1
    [[ "$(http_status "${host}" "${port}" /health)" == "200" ]] && return 0
    sleep 0.1
  done
  err "${name} did not answer /health within ${HEALTH_TIMEOUT}s"
  return 1
}

# spawn DAEMON OUTPUT ARGS...: start `python ARGS...` from the project folder; DAEMON=1 puts it
# in a session of its own with no terminal. Sets SPAWNED_PID.
spawn() {
  local daemon="$1" output="$2"
  shift 2
  if [[ "${daemon}" == 1 ]]; then
    (cd "${PROJECT_DIR}" && exec "${PYTHON}" -c \
      'import os, sys; os.setsid(); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])' "$@" \
      >>"${output}" 2>&1 </dev/null 3>&- 4>&-) &
  else
    (cd "${PROJECT_DIR}" && exec "${PYTHON}" "$@" >>"${output}" 2>&1) &
  fi
  SPAWNED_PID=$!
}

start_simulator() {
  local daemon="$1"
  local port="${SIMULATOR_PORT:-9998}"
  local log="${PROJECT_DIR}/logs/simulator.log"
  spawn "${daemon}" "${log}" -m app.simulator --port "${port}"
  SIM_PID="${SPAWNED_PID}"
  if ! wait_healthy "${SIM_PID}" 127.0.0.1 "${port}" simulator; then
    stop_pid "${SIM_PID}"
    SIM_PID=""
    die "the simulator did not start: see ${log}"
  fi
}

stop_pid() {
  local pid="$1"
  [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null || return 0
  kill -TERM "${pid}" 2>/dev/null || true
  local deadline
  deadline="$(awk -v now="${SECONDS}" -v t="${STOP_TIMEOUT:-30}" 'BEGIN { printf "%d", now + t + 5 }')"
  while kill -0 "${pid}" 2>/dev/null && ((SECONDS < deadline)); do
    # A child of this shell stays a zombie (and answers kill -0) until reaped.
    if [[ -z "$(cmdline "${pid}")" ]]; then
      break
    fi
    sleep 0.1
  done
  if kill -0 "${pid}" 2>/dev/null && [[ -n "$(cmdline "${pid}")" ]]; then
    err "pid ${pid} did not stop within ${STOP_TIMEOUT:-30}s: killing it"
    kill -KILL "${pid}" 2>/dev/null || true
  fi
  wait "${pid}" 2>/dev/null || true
}

# preflight [REUSED_SIMULATOR_PID]: options parsed, venv ready, configuration valid, ports free
# (the simulator's port may be taken by the simulator being reused).
preflight() {
  local reused_simulator="${1:-}"
  cmd_setup
  check_config
  local host="${PROXY_HOST:-127.0.0.1}" port="${PROXY_PORT:-9999}"
  port_in_use "${host}" "${port}" && die "port ${port} is in use (choose another with --port)"
  if [[ -z "${UPSTREAM_URL:-}" && -z "${reused_simulator}" ]] && port_in_use 127.0.0.1 "${SIMULATOR_PORT:-9998}"; then
    die "simulator port ${SIMULATOR_PORT:-9998} is in use (set SIMULATOR_PORT, or --upstream URL for a real server)"
  fi
  mkdir -p "$(dirname "$(log_file)")" "$(dirname "$(pid_file)")" "${PROJECT_DIR}/logs"
}

upstream_description() {
  if [[ -n "${UPSTREAM_URL:-}" ]]; then
    printf '%s\n' "${UPSTREAM_URL}"
  else
    printf 'built-in simulator (http://127.0.0.1:%s)\n' "${SIMULATOR_PORT:-9998}"
  fi
}

proxy_url() {
  printf 'http://%s:%s\n' "${PROXY_HOST:-127.0.0.1}" "${PROXY_PORT:-9999}"
}

cleanup_run() {
  trap - INT TERM EXIT
  stop_pid "${PROXY_PID}"
  stop_pid "${SIM_PID}"
}

cmd_run() {
  parse_options "$@"
  preflight
  trap cleanup_run EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if [[ -z "${UPSTREAM_URL:-}" ]]; then
    start_simulator 0
    err "built-in simulator on http://127.0.0.1:${SIMULATOR_PORT:-9998} (pid ${SIM_PID})"
  fi
  (cd "${PROJECT_DIR}" && exec "${PYTHON}" -m app) &
  PROXY_PID=$!
  local status=0
  wait "${PROXY_PID}" || status=$?
  PROXY_PID=""
  exit "${status}"
}

cmd_start() {
  parse_options "$@"
  local pid
  if pid="$(owned_pid "$(pid_file)" app)"; then
    load_state
    echo "proxy already running: $(proxy_url) (pid ${pid})"
    return 0
  fi
  clean_stale
  # A proxy killed with SIGKILL leaves its simulator running: reuse it.
  local reused=""
  if [[ -z "${UPSTREAM_URL:-}" ]]; then
    reused="$(owned_pid "$(sim_pid_file)" app.simulator)" || reused=""
  fi
  preflight "${reused}"
  export LOG_CONSOLE=false # the log file has it all; stdout/stderr go to logs/proxy.out
  local output="${PROJECT_DIR}/logs/proxy.out"
  umask 022
  if [[ -n "${reused}" ]]; then
    SIM_PID="${reused}"
    err "reusing the simulator left running (pid ${SIM_PID})"
  elif [[ -z "${UPSTREAM_URL:-}" ]]; then
    start_simulator 1
    printf '%s\n' "${SIM_PID}" >"$(sim_pid_file)"
  fi
  spawn 1 "${output}" -m app
  PROXY_PID="${SPAWNED_PID}"
  printf '%s\n' "${PROXY_PID}" >"$(pid_file)"
  write_state
  if ! wait_healthy "${PROXY_PID}" "${PROXY_HOST:-127.0.0.1}" "${PROXY_PORT:-9999}" proxy; then
    err "the proxy did not start; last lines of ${output}:"
    tail -n 5 "${output}" >&2 || true
    stop_pid "${PROXY_PID}"
    stop_pid "${SIM_PID}"
    rm -f "$(pid_file)" "$(sim_pid_file)" "$(state_file)"
    exit 1
  fi
  echo "proxy started: $(proxy_url) (pid ${PROXY_PID})"
  echo "upstream: $(upstream_description)${SIM_PID:+ (pid ${SIM_PID})}"
  echo "log: $(log_file)"
}

# clean_stale: remove pid files whose process is gone or is not ours (never signal a stranger).
clean_stale() {
  local file
  for file in "$(pid_file)" "$(sim_pid_file)"; do
    if [[ -f "${file}" ]] && ! owned_pid "${file}" "$([[ "${file}" == *.simulator.pid ]] && echo app.simulator || echo app)" >/dev/null; then
      err "removing stale pid file ${file}"
      rm -f "${file}"
    fi
  done
}

cmd_stop() {
  parse_options "$@"
  local pid sim_pid=""
  sim_pid="$(owned_pid "$(sim_pid_file)" app.simulator)" || sim_pid=""
  if ! pid="$(owned_pid "$(pid_file)" app)"; then
    clean_stale
    if [[ -n "${sim_pid}" ]]; then
      stop_pid "${sim_pid}"
      rm -f "$(sim_pid_file)"
    fi
    rm -f "$(state_file)"
    echo "proxy not running"
    return 0
  fi
  echo "stopping proxy (pid ${pid}); in-flight requests get up to ${STOP_TIMEOUT:-30}s"
  stop_pid "${pid}"
  if [[ -n "${sim_pid}" ]]; then
    stop_pid "${sim_pid}"
  fi
  rm -f "$(pid_file)" "$(sim_pid_file)" "$(state_file)"
  echo "proxy stopped"
}

cmd_restart() {
  load_state
  unset STARTED_AT
  parse_options "$@"
  cmd_stop
  cmd_start
}

format_duration() {
  awk -v s="$1" 'BEGIN { printf "%dh %dm %ds\n", s / 3600, (s % 3600) / 60, s % 60 }'
}

cmd_status() {
  parse_options "$@"
  local pid
  if ! pid="$(owned_pid "$(pid_file)" app)"; then
    if [[ -f "$(pid_file)" ]]; then
      clean_stale
      echo "proxy: not running (stale pid file removed)"
    else
      echo "proxy: not running"
    fi
    return 3
  fi
  load_state override
  local uptime="unknown" health
  if [[ "${STARTED_AT:-}" =~ ^[0-9]+$ ]]; then
    uptime="$(format_duration $(($(date +%s) - STARTED_AT)))"
  fi
  health="$(http_status "${PROXY_HOST:-127.0.0.1}" "${PROXY_PORT:-9999}" /health)"
  echo "proxy: running (pid ${pid}, up ${uptime})"
  echo "url: $(proxy_url)"
  echo "upstream: $(upstream_description)"
  if [[ "${health}" == "200" ]]; then
    echo "health: ok"
  else
    echo "health: not answering (${health:-no response})"
  fi
  local monitor="${PROJECT_DIR}/scripts/monitor_uvicorn.sh" box
  if [[ ! -x "${monitor}" ]]; then
    echo "metrics: scripts/monitor_uvicorn.sh is missing"
  elif box="$("${monitor}" --log "$(log_file)" 2>/dev/null)"; then
    printf '%s\n' "${box}"
  else
    echo "metrics: none in $(log_file) yet (metric lines need --debug / DEBUG=true)"
  fi
  return 0
}

cmd_logs() {
  local metrics=0 follow=1
  local rest=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --metrics) metrics=1 ;;
      --no-follow) follow=0 ;;
      *) rest+=("$1") ;;
    esac
    shift
  done
  parse_options "${rest[@]+"${rest[@]}"}"
  if owned_pid "$(pid_file)" app >/dev/null; then
    load_state override
  fi
  local file
  file="$(log_file)"
  [[ -e "${file}" ]] || die "no log file at ${file} yet"
  local pattern='\[(CONCURRENCY|ENDPOINTS|SYSTEM|LATENCY)\]'
  if [[ "${follow}" == 0 ]]; then
    if [[ "${metrics}" == 1 ]]; then
      tail -n 300 "${file}" | LC_ALL=C grep -E "${pattern}" || true
    else
      tail -n 50 "${file}"
    fi
    return 0
  fi
  # Following: exec, so that the pid a caller signals is the process that prints (no shell left
  # to report "Terminated", no orphan left reading the log). tail --pid ends with the grep.
  if [[ "${metrics}" == 1 ]]; then
    exec env LC_ALL=C grep --line-buffered -E "${pattern}" < <(exec tail --pid="$$" -n 300 -F "${file}")
  fi
  exec tail -n 50 -F "${file}"
}

main() {
  local command="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${command}" in
    setup) cmd_setup "$@" ;;
    run) cmd_run "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_restart "$@" ;;
    status) cmd_status "$@" ;;
    logs) cmd_logs "$@" ;;
    help | -h | --help) usage ;;
    "") usage_error "missing command" ;;
    *) usage_error "unknown command '${command}'" ;;
  esac
}

main "$@"
