# Shared helpers for the bats suites: free ports, polling with a deadline, cleanup by pid.
# shellcheck shell=bash

PROJECT_DIR="$(cd "${BATS_TEST_DIRNAME}/../.." && pwd)"
PY="${PROJECT_DIR}/.venv/bin/python"

free_port() {
  "${PY}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for SECONDS COMMAND...: run COMMAND until it succeeds; fail after SECONDS.
wait_for() {
  local seconds="$1"
  shift
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      echo "timed out after ${seconds}s waiting for: $*" >&3
      return 1
    fi
    sleep 0.05
  done
}

healthy() {
  curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/health" 2>/dev/null
}

# pid_gone PID: the process has exited (a zombie not yet reaped by init counts as gone).
pid_gone() {
  local state=""
  kill -0 "$1" 2>/dev/null || return 0
  read -r _ _ state _ <"/proc/$1/stat" 2>/dev/null || return 0
  [[ "${state}" == "Z" ]]
}

port_free() {
  ! (exec 4<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# `"${PY}" -c "${DEFAULT_SIGINT}" CMD...` runs CMD with SIGINT at its default disposition. A job
# started with `&` by a non-interactive shell ignores SIGINT, and bash cannot trap a signal ignored
# on entry; a terminal's Ctrl-C reaches a foreground command with the default disposition.
# (Call it directly, not from a function, so that `$!` is CMD's pid.)
# shellcheck disable=SC2034
DEFAULT_SIGINT='import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])'

# descendants PID: the pids of PID's children, grandchildren, ... (one per line).
descendants() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null || true); do
    echo "${child}"
    descendants "${child}"
  done
}

# kill_tree PID: stop PID and its descendants (tests clean up by pid). The tree is listed first
# and PID is signalled before its children: a shell whose foreground child dies of SIGTERM
# reports "Terminated" on its stderr, which would land in the output a test inspects.
kill_tree() {
  local pid="$1" tree
  tree="$(descendants "${pid}")"
  kill -TERM "${pid}" 2>/dev/null || true
  # shellcheck disable=SC2086 # one pid per word
  [[ -z "${tree}" ]] || kill -TERM ${tree} 2>/dev/null || true
}
