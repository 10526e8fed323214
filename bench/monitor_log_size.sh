#!/usr/bin/env bash
# Summary: Time `monitor_uvicorn.sh --json` on a 1 MB and a 1 GB log in one run, and print the ratio
# Usage: bench/monitor_log_size.sh [--runs N] [--size-mb N]
#
# Both logs hold the same realistic lines (metric triples among access lines); the big one is
# the small one repeated. The runs are interleaved (small, big, small, big, ...) and the median
# of each is compared, so machine noise hits both sides alike. Needs about 1 GB of free disk
# in $TMPDIR; the files are removed at the end.
# Exit codes: 0 done, 2 usage error.
set -euo pipefail
export LC_ALL=C

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly PROJECT_DIR
readonly MONITOR="${PROJECT_DIR}/scripts/monitor_uvicorn.sh"

RUNS=21
SIZE_MB=1024
WORK=""

usage_error() {
  printf 'monitor_log_size: %s\n' "$1" >&2
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

cleanup() {
  [[ -n "${WORK}" ]] && rm -rf "${WORK}"
}

make_chunk() {
  local file="$1" ts="$2" i
  for ((i = 0; i < 12000; i++)); do
    printf '%s INFO uvicorn.access[4242]: 127.0.0.1:%d - "POST /v1/chat/completions HTTP/1.1" 200\n' "${ts}" "$((40000 + i))"
    if ((i % 100 == 0)); then
      printf '%s INFO concurrency[4242]: [CONCURRENCY] Active: %d/64 | Peak: 64 | Total: %d | Failed: 3 | Queue: 0 | Uptime: 5h 1m %ds\n' "${ts}" "$((i % 7))" "$((100000 + i))" "$((i % 60))"
      printf '%s INFO concurrency[4242]: [ENDPOINTS] /v1/chat/completions: %d | /v1/completions: 0 | /v1/models: 0\n' "${ts}" "$((i % 7))"
      printf '%s INFO concurrency[4242]: [SYSTEM] CPU: 12.5%% | Memory: 80.1MB | Threads: 6\n' "${ts}"
    fi
  done >"${file}.raw"
  # exactly 1 MiB, cut at a line end
  head -c 1048576 "${file}.raw" | sed '$d' >"${file}"
  rm -f "${file}.raw"
}

# time_ms CMD...: wall time of one run in milliseconds.
time_ms() {
  local start end
  start="$(date +%s%N)"
  "$@" >/dev/null
  end="$(date +%s%N)"
  echo $(((end - start) / 1000000))
}

median() {
  sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

main() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --runs) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || usage_error "--runs needs a positive number"; RUNS="$2"; shift ;;
      --size-mb) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || usage_error "--size-mb needs a positive number"; SIZE_MB="$2"; shift ;;
      *) usage_error "unknown option '$1'" ;;
    esac
    shift
  done
  WORK="$(mktemp -d)"
  trap cleanup EXIT
  local ts small="${WORK}/small.log" big="${WORK}/big.log" i
  ts="$(date '+%Y-%m-%d %H:%M:%S,000')"
  make_chunk "${small}" "${ts}"
  for ((i = 0; i < SIZE_MB; i++)); do cat "${small}"; done >"${big}"
  local small_times=() big_times=()
  "${MONITOR}" --json --log "${small}" >/dev/null
  "${MONITOR}" --json --log "${big}" >/dev/null
  for ((i = 0; i < RUNS; i++)); do
    small_times+=("$(time_ms "${MONITOR}" --json --log "${small}")")
    big_times+=("$(time_ms "${MONITOR}" --json --log "${big}")")
  done
  local small_ms big_ms
  small_ms="$(printf '%s\n' "${small_times[@]}" | median)"
  big_ms="$(printf '%s\n' "${big_times[@]}" | median)"
  printf 'monitor_uvicorn.sh --json, median of %d interleaved runs (awk: %s)\n' "${RUNS}" "$(readlink -f "$(command -v awk)")"
  printf '  %8s log: %6s ms\n' "$(wc -c <"${small}") B" "${small_ms}" "$(wc -c <"${big}") B" "${big_ms}"
  awk -v a="${big_ms}" -v b="${small_ms}" 'BEGIN { printf "  ratio big/small: %.2f (target <= 2)\n", (b > 0 ? a / b : 0) }'
}

main "$@"
