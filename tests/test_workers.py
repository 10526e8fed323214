"""Several uvicorn workers: /monitor, /metrics and the shell monitor give whole-server numbers."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import PROJECT_DIR, Server, start_proxy, start_simulator, wait_until

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def monitor(proxy: Server) -> dict:
    return httpx.get(proxy.url + "/monitor").json()


def shell_json(log_file: Path) -> dict:
    out = subprocess.run(
        [str(PROJECT_DIR / "scripts/monitor_uvicorn.sh"), "--json", "--log", str(log_file)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return json.loads(out) if out.strip() else {}


async def test_two_workers_add_up(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--ttft-ms", "1500", "--token-ms", "1", "--tokens", "3")
    proxy = start_proxy(
        tmp_path, sim.url, {"WORKERS": "2", "DEBUG": "true", "MONITOR_UPDATE_INTERVAL": "0.2", "LOG_LEVEL": "info"}
    )
    log_file: Path = proxy.log_file  # type: ignore[attr-defined]
    try:

        def settled() -> int | None:
            """The whole-server total once 10 asks in a row agree (the other workers' part is
            published every 0.25 s), else None."""
            answers = [monitor(proxy) for _ in range(10)]
            totals = {a["total_requests"] for a in answers}
            quiet = all(a["workers"] == 2 and a["active"] == 0 and a["queue_depth"] == 0 for a in answers)
            return totals.pop() if len(totals) == 1 and quiet else None

        base = int(wait_until(lambda: (t := settled()) is not None and t + 1, timeout=15)) - 1  # /health probes

        # 10 slow simultaneous requests, spread over the workers: active 10 for the whole server
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            url = proxy.url + "/v1/chat/completions"
            slow = [asyncio.ensure_future(client.post(url, json=CHAT)) for _ in range(10)]
            snap = await asyncio.to_thread(wait_until, lambda: (s := monitor(proxy))["active"] == 10 and s, 10)
            assert snap["endpoints"]["/v1/chat/completions"] == 10
            assert snap["workers"] == 2
            assert len(snap["pids"]) == 2
            assert [r.status_code for r in await asyncio.gather(*slow)] == [200] * 10

            # 40 quick requests over new connections
            models = await asyncio.gather(*(client.get(proxy.url + "/v1/models") for _ in range(40)))
            assert [r.status_code for r in models] == [200] * 40

        expected = base + 50
        wait_until(lambda: settled() == expected, timeout=5)
        answers = [monitor(proxy) for _ in range(10)]
        assert [a["total_requests"] for a in answers] == [expected] * 10
        assert {a["pid"] for a in answers} == {None}
        assert all(a["endpoint_stats"]["/v1/models"]["total"] == 40 for a in answers)
        assert all(a["active"] == 0 for a in answers)
        assert answers[0]["peak_is"].startswith("sum of the workers' peaks")

        text = (await asyncio.to_thread(httpx.get, proxy.url + "/metrics")).text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        models_total = sum(
            s.value
            for s in families["llm_proxy_requests"].samples
            if s.name == "llm_proxy_requests_total" and s.labels["endpoint"] == "/v1/models"
        )
        assert models_total == 40
        assert families["llm_proxy_workers"].samples[0].value == 2

        # the shell monitor sums the newest lines of each worker's pid
        shell = wait_until(lambda: (j := shell_json(log_file)) and j.get("total_requests") == expected and j, 10)
        assert shell["workers"] == 2
        assert sorted(shell["pids"]) == sorted(answers[0]["pids"])
    finally:
        proxy.stop()
        sim.stop()
