"""The benchmark suite: the proxy beside nginx and direct access, every figure a ratio of one run.

    ./bench/run.sh [--quick] [--clients aiohttp,httpx,httpx2] [--out FILE]

Starts everything on loopback (nginx upstream and nginx reverse proxy when nginx is installed,
the simulator, the proxy in each configuration), runs the loads interleaved (A B A B ...),
and prints (and writes) a Markdown table of the figures, the ratios and the targets of
issue 7. wrk is used for the non-streaming loads when installed, else bench/loadgen.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(BENCH_DIR))

import loadgen  # noqa: E402
import monitor_overhead  # noqa: E402

PYTHON = sys.executable
FIXED_JSON = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there, friend."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    }
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


@dataclass
class Processes:
    """Everything the run starts, stopped by pid at the end."""

    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, args: list[str], port: int, env: dict[str, str] | None = None, name: str = "proc") -> int:
        log = open(self.workdir / f"{name}-{port}.log", "wb")  # noqa: SIM115 - lives as long as the process
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(
            args, cwd=PROJECT_DIR, env=full_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.procs.append(proc)
        wait_port(port, proc)
        return proc.pid

    def stop(self, pid: int) -> None:
        for proc in self.procs:
            if proc.pid == pid and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


NGINX_UPSTREAM = """
worker_processes 1;
pid {dir}/nginx-up.pid;
error_log {dir}/nginx-up.error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body-up;
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location / {{ default_type application/json; return 200 '{body}'; }}
  }}
}}
"""
NGINX_PROXY = """
worker_processes 1;
pid {dir}/nginx-proxy.pid;
error_log {dir}/nginx-proxy.error.log warn;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body-proxy;
  proxy_temp_path {dir}/proxy-temp;
  upstream backend {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def start_nginx(procs: Processes, template: str, name: str, **values: Any) -> int:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    config = procs.workdir / f"{name}.conf"
    config.write_text(template.format(dir=procs.workdir, **values))
    return procs.start([nginx, "-c", str(config), "-p", str(procs.workdir)], values["port"], name=name)


# -- loads ----------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""


def run_wrk(url: str, concurrency: int, duration: float, workdir: Path) -> dict[str, Any]:
    script = workdir / "post.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT.format(body=loadgen.CHAT_BODY.decode()))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out)
    factor = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = 0
    for pattern in (
        r"Non-2xx or 3xx responses: (\d+)",
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
    ):
        match = re.search(pattern, out)
        if match:
            errors += sum(int(g) for g in match.groups())
    return {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * factor[p50.group(2)] if p50 else None,
        "errors": errors,
        "tool": "wrk",
    }


def measure(url: str, concurrency: int, duration: float, stream: bool, workdir: Path, use_wrk: bool) -> dict[str, Any]:
    if use_wrk and not stream:
        return run_wrk(url, concurrency, duration, workdir)
    result = asyncio.run(loadgen.run(url, concurrency, duration, stream))
    result["tool"] = "loadgen"
    return result


@dataclass
class Case:
    name: str
    url: str
    concurrency: int
    stream: bool = False
    results: list[dict[str, Any]] = field(default_factory=list)

    def median(self, key: str) -> float | None:
        values = [r[key] for r in self.results if r.get(key) is not None]
        return statistics.median(values) if values else None

    @property
    def errors(self) -> int:
        return sum(int(r.get("errors", 0)) for r in self.results)


def interleave(cases: list[Case], rounds: int, duration: float, workdir: Path, use_wrk: bool) -> None:
    for _ in range(rounds):
        for case in cases:
            case.results.append(measure(case.url, case.concurrency, duration, case.stream, workdir, use_wrk))


# -- the run ------------------------------------------------------------------------------------


@contextmanager
def processes() -> Iterator[Processes]:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        procs = Processes(Path(tmp))
        try:
            yield procs
        finally:
            procs.stop_all()


def proxy_settings(workdir: Path, port: int, upstream: str, env: dict[str, str]) -> dict[str, str]:
    """The environment of a benchmarked proxy: quiet logs in the run's folder, 64 admitted at once."""
    return {
        "PROXY_PORT": str(port),
        "UPSTREAM_URL": upstream,
        "LOG_FILE": str(workdir / f"proxy-{port}.log"),
        "LOG_CONSOLE": "false",
        "LOG_LEVEL": "info",
        "MAX_CONCURRENT_REQUESTS": "64",
        **env,
    }


def start_proxy(procs: Processes, upstream: str, env: dict[str, str]) -> tuple[int, int]:
    port = free_port()
    settings = proxy_settings(procs.workdir, port, upstream, env)
    return port, procs.start([PYTHON, "-m", "app"], port, settings, name="proxy")


def start_simulator(procs: Processes, *args: str) -> int:
    port = free_port()
    procs.start([PYTHON, "-m", "app.simulator", "--port", str(port), *args], port, name="simulator")
    return port


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1024 * 1024)


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


@dataclass
class Row:
    target: str
    figure: str
    goal: str
    ok: bool | None

    def markdown(self) -> str:
        verdict = {True: "met", False: "**not met**", None: "n/a"}[self.ok]
        return f"| {self.target} | {self.figure} | {self.goal} | {verdict} |"


def run_suite(args: argparse.Namespace) -> tuple[list[str], list[Row]]:
    quick = args.quick
    rounds = 1 if quick else 3
    duration = 2.0 if quick else 5.0
    has_nginx = shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()
    use_wrk = shutil.which("wrk") is not None
    notes: list[str] = []
    if not has_nginx:
        notes.append(
            "nginx is not installed (apt-get install nginx-light): targets against nginx are n/a; "
            "the simulator is the non-streaming upstream"
        )
    if not use_wrk:
        notes.append("wrk is not installed (apt-get install wrk): bench/loadgen.py made every load")
    rows: list[Row] = []
    detail: list[str] = []

    with processes() as procs:
        workdir = procs.workdir
        # Non-streaming upstream: nginx's fixed answer, else the simulator answering at once.
        if has_nginx:
            up_port = free_port()
            start_nginx(procs, NGINX_UPSTREAM, "nginx-up", port=up_port, body=FIXED_JSON)
            ngx_port = free_port()
            start_nginx(procs, NGINX_PROXY, "nginx-proxy", port=ngx_port, upstream=up_port)
        else:
            up_port = start_simulator(procs, "--ttft-ms", "0", "--token-ms", "0", "--tokens", "5")
            ngx_port = 0
        upstream = f"http://127.0.0.1:{up_port}"
        on_port, _ = start_proxy(procs, upstream, {"DEBUG": "true", "MONITOR_UPDATE_INTERVAL": "1"})
        off_port, _ = start_proxy(procs, upstream, {"ENABLE_CONCURRENCY_MONITOR": "false"})
        path = "/v1/chat/completions"

        def url(port: int) -> str:
            return f"http://127.0.0.1:{port}{path}"

        cases = {
            "direct c1": Case("direct c1", url(up_port), 1),
            "proxy c1": Case("proxy c1", url(on_port), 1),
            "direct c16": Case("direct c16", url(up_port), 16),
            "proxy c16": Case("proxy c16", url(on_port), 16),
            "proxy-off c16": Case("proxy-off c16", url(off_port), 16),
        }
        if has_nginx:
            cases["nginx c1"] = Case("nginx c1", url(ngx_port), 1)
            cases["nginx c16"] = Case("nginx c16", url(ngx_port), 16)
        print(f"non-streaming loads: {len(cases)} cases x {rounds} rounds x {duration:g}s", file=sys.stderr)
        interleave(list(cases.values()), rounds, duration, workdir, use_wrk)

        # Streaming: the simulator sends 20 content chunks at once.
        sim_port = start_simulator(procs, "--ttft-ms", "0", "--token-ms", "0", "--tokens", "20")
        stream_port, _ = start_proxy(
            procs, f"http://127.0.0.1:{sim_port}", {"DEBUG": "true", "MONITOR_UPDATE_INTERVAL": "1"}
        )
        streams = {
            "stream direct c1": Case("stream direct c1", url(sim_port), 1, True),
            "stream proxy c1": Case("stream proxy c1", url(stream_port), 1, True),
            "stream direct c16": Case("stream direct c16", url(sim_port), 16, True),
            "stream proxy c16": Case("stream proxy c16", url(stream_port), 16, True),
        }
        print(f"streaming loads: {len(streams)} cases x {rounds} rounds", file=sys.stderr)
        interleave(list(streams.values()), rounds, duration, workdir, False)

        for case in [*cases.values(), *streams.values()]:
            detail.append(
                f"| {case.name} | {fmt(case.median('rps'), 0)} | {fmt(case.median('p50_ms'), 3)} | "
                f"{fmt(case.median('ttft_p50_ms'), 3) if case.stream else ''} | {case.errors} |"
            )

        proxy16 = cases["proxy c16"].median("rps")
        if has_nginx:
            ratio = proxy16 / cases["nginx c16"].median("rps")  # type: ignore[operator]
            rows.append(Row("1. throughput c=16, proxy / nginx proxy", f"{ratio:.3f}", ">= 0.05", ratio >= 0.05))
        else:
            rows.append(Row("1. throughput c=16, proxy / nginx proxy", "n/a (no nginx)", ">= 0.05", None))
        added = cases["proxy c1"].median("p50_ms") - cases["direct c1"].median("p50_ms")  # type: ignore[operator]
        rows.append(Row("2. added latency c=1 (p50 proxy - direct)", f"{added:.3f} ms", "<= 0.5 ms", added <= 0.5))
        s_ratio = streams["stream proxy c16"].median("rps") / streams["stream direct c16"].median("rps")  # type: ignore[operator]
        rows.append(Row("3a. stream throughput c=16, proxy / direct", f"{s_ratio:.3f}", ">= 0.12", s_ratio >= 0.12))
        ttft = streams["stream proxy c1"].median("ttft_p50_ms") - streams["stream direct c1"].median("ttft_p50_ms")  # type: ignore[operator]
        rows.append(Row("3b. added time to first token c=1 (p50)", f"{ttft:.3f} ms", "<= 1 ms", ttft <= 1.0))
        m_ratio = proxy16 / cases["proxy-off c16"].median("rps")  # type: ignore[operator]
        rows.append(Row("4a. throughput, monitor on / off", f"{m_ratio:.3f}", ">= 0.97", m_ratio >= 0.97))

        micro = asyncio.run(monitor_overhead.measure(10_000 if quick else 50_000, 3 if quick else 7))
        cost_us = (micro["monitor_cost_ns"] or 0) / 1000
        beside = micro["instrumentator_cost_ns"]
        beside_text = f" (prometheus-fastapi-instrumentator: {beside / 1000:.1f} µs)" if beside else ""
        rows.append(Row("4b. monitor cost per request", f"{cost_us:.1f} µs{beside_text}", "<= 10 µs", cost_us <= 10))

        # Memory: a fresh proxy, idle, then after N requests.
        mem_port, mem_pid = start_proxy(procs, upstream, {"DEBUG": "true", "MONITOR_UPDATE_INTERVAL": "1"})
        httpx.get(f"http://127.0.0.1:{mem_port}/health")
        time.sleep(1.0)  # settle: the figure is the resting size
        idle = rss_mb(mem_pid)
        count = 20_000 if quick else 100_000
        load = asyncio.run(loadgen.run(url(mem_port), 16, 600.0, max_requests=count))
        after = rss_mb(mem_pid)
        rows.append(Row("5a. idle RSS", f"{idle:.1f} MB", "<= 70 MB", idle <= 70))
        rows.append(
            Row(
                f"5b. RSS after {load['requests']:,} requests",
                f"{after:.1f} MB (+{after - idle:.1f})",
                "<= idle + 15 MB",
                after <= idle + 15 and load["errors"] == 0,
            )
        )
        procs.stop(mem_pid)

        rows.append(streams_row(procs))
        rows.append(log_size_row(quick))
    return [*notes, "", *detail], rows


def streams_row(procs: Processes, count: int = 1000) -> Row:
    """1,000 concurrent streams through one worker: all complete, /monitor sees all 1,000 at once."""
    sim_port = start_simulator(procs, "--ttft-ms", "0", "--token-ms", "100", "--tokens", "20")
    port, pid = start_proxy(
        procs, f"http://127.0.0.1:{sim_port}", {"MAX_CONCURRENT_REQUESTS": "1100", "MAX_QUEUE_SIZE": "100"}
    )
    peak = 0

    async def watch(stop: asyncio.Event) -> None:
        nonlocal peak
        async with httpx.AsyncClient() as client:
            while not stop.is_set():
                snap = (await client.get(f"http://127.0.0.1:{port}/monitor")).json()
                peak = max(peak, snap["active"])
                await asyncio.sleep(0.1)

    async def go() -> dict[str, Any]:
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(watch(stop))
        result = await loadgen.run(
            f"http://127.0.0.1:{port}/v1/chat/completions", count, 60.0, stream=True, max_requests=count
        )
        stop.set()
        await watcher
        return result

    result = asyncio.run(go())
    final = httpx.get(f"http://127.0.0.1:{port}/monitor").json()
    ok = result["requests"] == count and result["errors"] == 0 and peak == count and final["failed_requests"] == 0
    figure = (
        f"{result['requests'] - result['errors']:,} of {count:,} complete, peak active {peak:,} "
        f"(/monitor peak {final['peak']:,}), errors {result['errors']}"
    )
    procs.stop(pid)
    return Row("6. 1,000 concurrent streams, one worker", figure, "all complete, active 1,000, 0 errors", ok)


def log_size_row(quick: bool) -> Row:
    out = subprocess.run(
        [str(BENCH_DIR / "monitor_log_size.sh"), "--runs", "5" if quick else "21"],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout
    match = re.search(r"ratio big/small: ([\d.]+)", out)
    ratio = float(match.group(1)) if match else float("nan")
    times = re.findall(r"log:\s+(\d+) ms", out)
    figure = f"{ratio:.2f} ({times[1]} ms / {times[0]} ms)" if len(times) == 2 else f"{ratio:.2f}"
    return Row("7. monitor_uvicorn.sh --json, 1 GiB log / 1 MiB log", figure, "<= 2", ratio <= 2)


def client_comparison(clients: list[str], quick: bool) -> list[str]:
    """The same proxy with each upstream client, interleaved: throughput and latency."""
    rounds, duration = (1, 2.0) if quick else (3, 5.0)
    use_wrk = shutil.which("wrk") is not None
    lines = ["| upstream client | req/s c=1 | p50 c=1 (ms) | req/s c=16 | stream req/s c=16 |", "|---|---|---|---|---|"]
    with processes() as procs:
        up_port = start_simulator(procs, "--ttft-ms", "0", "--token-ms", "0", "--tokens", "20")
        cases: dict[str, list[Case]] = {}
        for client in clients:
            port, _ = start_proxy(procs, f"http://127.0.0.1:{up_port}", {"UPSTREAM_CLIENT": client})
            target = f"http://127.0.0.1:{port}/v1/chat/completions"
            cases[client] = [Case("c1", target, 1), Case("c16", target, 16), Case("s16", target, 16, True)]
        interleave([c for group in cases.values() for c in group], rounds, duration, procs.workdir, use_wrk)
        for client, (c1, c16, s16) in cases.items():
            lines.append(
                f"| {client} | {fmt(c1.median('rps'), 0)} | {fmt(c1.median('p50_ms'), 3)} | "
                f"{fmt(c16.median('rps'), 0)} | {fmt(s16.median('rps'), 0)} |"
            )
    return lines


def report(notes: list[str], rows: list[Row], clients: list[str], command: str) -> str:
    lines = [
        f"Benchmark run of {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores: `{command}`",
        "",
        "| target | measured | goal | |",
        "|---|---|---|---|",
        *[row.markdown() for row in rows],
        "",
    ]
    detail_start = notes.index("") if "" in notes else len(notes)
    for note in notes[:detail_start]:
        lines.append(f"- {note}")
    lines += [
        "",
        "Medians of the interleaved rounds (req/s, latency p50 in ms, time to first content token p50 in ms, "
        "errors over all rounds):",
        "",
        "| case | req/s | p50 ms | TTFT p50 ms | errors |",
        "|---|---|---|---|---|",
        *notes[detail_start + 1 :],
    ]
    if clients:
        lines += ["", "Upstream clients, same run:", "", *clients]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmarks with ratios and the targets of issue 7")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s per case (default 3 of 5 s)")
    parser.add_argument("--clients", default="", help="also compare upstream clients, e.g. aiohttp,httpx,httpx2")
    parser.add_argument("--out", default=str(BENCH_DIR / "results" / "latest.md"))
    args = parser.parse_args()
    command = (
        "./bench/run.sh" + (" --quick" if args.quick else "") + (f" --clients {args.clients}" if args.clients else "")
    )
    notes, rows = run_suite(args)
    clients = client_comparison([c for c in args.clients.split(",") if c], args.quick) if args.clients else []
    text = report(notes, rows, clients, command)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"(written to {out})", file=sys.stderr)


if __name__ == "__main__":
    main()
