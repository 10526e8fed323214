#!/usr/bin/env bash
# Summary: Run the benchmark suite (proxy vs nginx vs direct) and print the targets' table
# Usage: bench/run.sh [--quick] [--clients aiohttp,httpx,httpx2] [--out FILE]
#
# Installs bench/requirements.txt into .venv first (saying so); uses nginx and wrk when they
# are installed and says how to get them otherwise. Everything runs on 127.0.0.1.
# Exit codes: 0 done, 1 a step failed, 2 usage error.
set -euo pipefail

PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly PROJECT_DIR

main() {
  "${PROJECT_DIR}/run_proxy.sh" setup --dev
  local stamp="${PROJECT_DIR}/.venv/.stamp-bench"
  local want
  want="$(sha256sum "${PROJECT_DIR}/bench/requirements.txt" | cut -d' ' -f1)"
  if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${want}" ]]; then
    echo "bench: installing bench/requirements.txt into .venv" >&2
    "${PROJECT_DIR}/.venv/bin/python" -m pip install --disable-pip-version-check -q -r "${PROJECT_DIR}/bench/requirements.txt"
    echo "${want}" >"${stamp}"
  fi
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] ||
    echo "bench: nginx not found: targets against nginx will be n/a (apt-get install nginx-light)" >&2
  command -v wrk >/dev/null 2>&1 ||
    echo "bench: wrk not found: bench/loadgen.py makes every load (apt-get install wrk)" >&2
  ulimit -n 16384 2>/dev/null || true # 1,000 streams need about 3,000 descriptors in the proxy
  cd "${PROJECT_DIR}"
  exec "${PROJECT_DIR}/.venv/bin/python" bench/run.py "$@"
}

main "$@"
