"""What operators plug in: the Prometheus rules (checked with promtool) and the Grafana
dashboard, each metric they name found in a real scrape of a running daemon."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from daemon_helpers import running, until
from prometheus_client.parser import text_string_to_metric_families

from balloond.adapters.metrics import MetricsAdapter
from balloond.core.link import LinkState
from balloond.core.units import GiB
from balloond.runtime.config import parse_config
from testkit.sim import SimFleet, SimGuestSpec, Trace

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
RULES = CONTRIB / "prometheus" / "balloond-rules.yml"
RULES_TEST = CONTRIB / "prometheus" / "balloond-rules.test.yml"
DASHBOARD = CONTRIB / "grafana" / "balloond-dashboard.json"
#: Series Prometheus makes itself, not the daemon.
PROMETHEUS_OWN = {"up"}
_METRIC = re.compile(r"\b((?:balloond|process)_[a-z0-9_]+)\b")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (make system installs Debian's prometheus)")
    return found


def test_the_alerting_rules_pass_promtool() -> None:
    promtool = _promtool()
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        result = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _rule_metrics() -> set[str]:
    return set(_METRIC.findall(RULES.read_text(encoding="utf-8"))) | (
        {"up"} if "up{" in RULES.read_text(encoding="utf-8") else set()
    )


def _dashboard_metrics() -> set[str]:
    doc = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in doc["templating"]["list"] if "definition" in v]
    assert exprs
    return {m for e in exprs for m in _METRIC.findall(e)}


def _exported(body: str) -> set[str]:
    """Every metric a scrape declares or samples (counters by their ``_total`` name too):
    a family with no series yet, such as task failures before any, still counts."""
    names = set()
    for family in text_string_to_metric_families(body):
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        names.update(sample.name for sample in family.samples)
    return names


async def _scrape(adapter: MetricsAdapter) -> str:
    assert adapter.bound is not None
    reader, writer = await asyncio.open_connection(*adapter.bound)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        writer.write_eof()
        response = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await writer.wait_closed()
    return response.partition(b"\r\n\r\n")[2].decode()


async def test_every_metric_the_rules_and_the_dashboard_name_is_exported(
    tmp_path: Path,
) -> None:
    sock_dir = tmp_path / "qmp"
    sock_dir.mkdir()
    busy = Trace(times_s=(0.0,), anon_bytes=(GiB // 10,), cache_bytes=(GiB // 10,))
    specs = [
        SimGuestSpec("old", GiB, trace=busy, disk=True),
        SimGuestSpec("new", GiB, trace=busy, qemu_version=(9, 2, 0)),  # reports OOM kills
    ]
    config = parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
            },
            "discovery": {"globs": [f"{sock_dir}/*.sock"], "rescan_interval_s": 0.5},
        }
    )
    async with SimFleet(dir=sock_dir, guests=specs), running(config) as daemon:
        assert await until(
            lambda: (
                len(daemon.guests) == 2
                and all(
                    c.link.state is LinkState.ACTIVE and c.last_decision is not None
                    for c in daemon.guests.values()
                )
            )
        )
        adapter = MetricsAdapter(daemon, address="127.0.0.1:0")
        stop = asyncio.Event()
        task = asyncio.create_task(adapter.run(stop), name="metrics-under-test")
        try:
            assert await until(lambda: adapter.bound is not None or task.done())
            body = await _scrape(adapter)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    exported = _exported(body) | PROMETHEUS_OWN
    missing_rules = sorted(_rule_metrics() - exported)
    missing_board = sorted(_dashboard_metrics() - exported)
    assert not missing_rules, f"rules name metrics the daemon does not export: {missing_rules}"
    assert not missing_board, f"dashboard names metrics the daemon does not export: {missing_board}"
    assert len(_dashboard_metrics()) >= 10
