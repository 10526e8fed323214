#!/usr/bin/env bash
# Summary: Set up and run the LLM concurrency proxy (and its built-in simulator upstream)
# Usage: run_proxy.sh <command> [options]
#
# Commands:
#   setup [--dev]        Make .venv and install requirements.txt (--dev: requirements-dev.txt);
#                        quick when nothing changed
#   run                  Run the proxy in the foreground (Ctrl-C stops proxy and simulator)
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
#
# Exit codes:
#   0  success
#   1  failure (bad configuration value, set-up failed, port in use, did not start)
#   2  usage error (unknown command or flag, bad flag value)
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

# http_status HOST PORT PATH: print the HTTP status of a GET, using bash's /dev/tcp (no curl needed).
http_status() {
  local host="$1" port="$2" path="$3" line=""
  [[ "${host}" == "0.0.0.0" || "${host}" == "::" ]] && host="127.0.0.1"
  {
    exec 3<>"/dev/tcp/${host}/${port}" &&
      printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "${path}" "${host}" >&3 &&
      IFS= read -r -t 3 line <&3
  } 2>/dev/null || true
  exec 3>&- 2>/dev/null || true
  line="${line%$'\r'}"
  [[ "${line}" =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]] && printf '%s\n' "${BASH_REMATCH[1]}"
  return 0
}

port_in_use() {
  local port="$1"
  { exec 4<>"/dev/tcp/127.0.0.1/${port}"; } 2>/dev/null || return 1
  exec 4>&- 2>/dev/null || true
  return 0
}

# wait_healthy PID PORT NAME: until /health answers 200; fail if PID dies or time runs out.
wait_healthy() {
  local pid="$1" port="$2" name="$3" host="${4:-127.0.0.1}"
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "${pid}" 2>/dev/null || return 1
    [[ "$(http_status "${host}" "${port}" /health)" == "200" ]] && return 0
    sleep 0.1
  done
  err "${name} did not answer /health within ${HEALTH_TIMEOUT}s"
  return 1
}

start_simulator() {
  local log="$1"
  local port="${SIMULATOR_PORT:-9998}"
  if port_in_use "${port}"; then
    die "simulator port ${port} is in use (set SIMULATOR_PORT, or --upstream URL for a real server)"
  fi
  (cd "${PROJECT_DIR}" && exec "${PYTHON}" -m app.simulator --port "${port}" >>"${log}" 2>&1) &
  SIM_PID=$!
  wait_healthy "${SIM_PID}" "${port}" simulator || die "the simulator did not start: see ${log}"
}

stop_pid() {
  local pid="$1"
  [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null || return 0
  kill -TERM "${pid}" 2>/dev/null || true
  local deadline=$((SECONDS + ${STOP_TIMEOUT:-30} + 5))
  while kill -0 "${pid}" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.1
  done
  kill -KILL "${pid}" 2>/dev/null || true
  wait "${pid}" 2>/dev/null || true
}

cleanup_run() {
  trap - INT TERM EXIT
  stop_pid "${PROXY_PID}"
  stop_pid "${SIM_PID}"
}

cmd_run() {
  parse_options "$@"
  cmd_setup
  check_config
  local port="${PROXY_PORT:-9999}"
  port_in_use "${port}" && die "port ${port} is in use (choose another with --port)"
  local log_dir
  log_dir="$(dirname "${LOG_FILE:-logs/proxy.log}")"
  (cd "${PROJECT_DIR}" && mkdir -p "${log_dir}")
  trap cleanup_run EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if [[ -z "${UPSTREAM_URL:-}" ]]; then
    start_simulator "${PROJECT_DIR}/logs/simulator.log"
    err "built-in simulator on http://127.0.0.1:${SIMULATOR_PORT:-9998} (pid ${SIM_PID})"
  fi
  (cd "${PROJECT_DIR}" && exec "${PYTHON}" -m app) &
  PROXY_PID=$!
  local status=0
  wait "${PROXY_PID}" || status=$?
  PROXY_PID=""
  exit "${status}"
}

main() {
  local command="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${command}" in
    setup) cmd_setup "$@" ;;
    run) cmd_run "$@" ;;
    help | -h | --help) usage ;;
    "") usage_error "missing command" ;;
    *) usage_error "unknown command '${command}'" ;;
  esac
}

main "$@"
