"""Instructions per request through the proxy, monitor on and off, counted by valgrind (callgrind).

    .venv/bin/python bench/instructions.py [--requests 1500] [--concurrency 8]

Throughput on a shared machine moves by several percent from one run to the next; an
instruction count does not (the same figure to 0.3% on a rerun). Each configuration runs
under callgrind twice, for a few requests and for `--requests` more, against nginx's fixed
answer (the benchmark's upstream); the difference of the two totals divided by the
difference of the request counts is the cost of one request, start-up and shutdown cancel
out. Needs valgrind and nginx (apt-get install valgrind nginx-light); about 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import run

CONFIGS: dict[str, dict[str, str]] = {
    "monitor off": {"ENABLE_CONCURRENCY_MONITOR": "false"},
    "monitor on": {"DEBUG": "false"},
}
WARMUP = 300
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def load(url: str, count: int, concurrency: int) -> None:
    left = count
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, data=BODY, headers={"content-type": "application/json"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"status {resp.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def instructions(workdir: Path, upstream: int, env: dict[str, str], requests: int, concurrency: int) -> int:
    """Total instructions of one proxy process that served `requests` requests, start to exit."""
    port = run.free_port()
    out = workdir / f"callgrind-{port}.out"
    err = workdir / f"callgrind-{port}.err"
    settings = {**os.environ, **run.proxy_settings(workdir, port, f"http://127.0.0.1:{upstream}", env)}
    # uvicorn itself (`python -m app` would exec it, and valgrind does not follow an exec)
    server = ["-m", "uvicorn", "app.main:app", "--port", str(port), "--no-access-log", "--log-level", "info"]
    argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", run.PYTHON, *server]
    with err.open("w") as err_file:
        proc = subprocess.Popen(argv, cwd=run.PROJECT_DIR, env=settings, stdout=subprocess.DEVNULL, stderr=err_file)
        try:
            run.wait_port(port, proc, timeout=300)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            asyncio.run(load(url, requests, concurrency))
        finally:
            proc.terminate()
            proc.wait(300)
    match = re.search(r"Collected : (\d+)", err.read_text())
    if match is None:
        raise RuntimeError(f"no instruction count in {err}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    for tool in ("valgrind", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            sys.exit(f"instructions: {tool} is not installed (apt-get install valgrind nginx-light)")
    per_request: dict[str, float] = {}
    with run.processes() as procs:
        upstream = run.free_port()
        run.start_nginx(procs, run.NGINX_UPSTREAM, "nginx-up", port=upstream, body=run.FIXED_JSON)
        for name, env in CONFIGS.items():
            few = instructions(procs.workdir, upstream, env, WARMUP, args.concurrency)
            many = instructions(procs.workdir, upstream, env, WARMUP + args.requests, args.concurrency)
            per_request[name] = (many - few) / args.requests
            print(f"{name:12s} {per_request[name]:10,.0f} instructions per request", flush=True)
    off, on = per_request["monitor off"], per_request["monitor on"]
    print(f"monitor on / off: {on / off:.3f} ({on - off:+,.0f} instructions per request)")


if __name__ == "__main__":
    main()
