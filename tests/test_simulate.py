"""Offline replay and ``balloond simulate``: deterministic runs, the report and chart, clear
errors for bad input, the baselines' rules, and traces recorded by ``balloond run``."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from pathlib import Path

from daemon_helpers import running, until

from balloond.core.link import LinkState
from balloond.core.stats import BalloonStats, GuestSample, HostSnapshot
from balloond.core.units import GiB, MiB
from balloond.replay import (
    EngineController,
    GuestSpec,
    HostSpec,
    MomController,
    ProxmoxController,
    Scenario,
    overcommitted_host,
    run,
    traces,
)
from balloond.replay.traces import EXAMPLES_DIR, Trace
from balloond.runtime.config import load_config, parse_config
from balloond.service.recorder import TraceRecorder
from testkit.sim.fleet import SimFleet
from testkit.sim.qmp_server import SimGuestSpec

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "balloond.toml"
CONTROLLERS = (
    "static",
    "free-page-reporting",
    "mom",
    "mom-upstream",
    "proxmox",
    "usable-band",
    "balloond",
)


def small_scenario(seed: int) -> Scenario:
    """Four guests, five minutes: bursts placed by ``seed``, the rest shifted by it."""
    rng = random.Random(seed)
    ram = 1 * GiB
    guests = (
        GuestSpec(name="bursty", ram_bytes=ram, trace=traces.bursty(ram, seed=seed)),
        GuestSpec(name="idle", ram_bytes=2 * ram, trace=traces.idle(2 * ram)),
        GuestSpec(
            name="saw", ram_bytes=ram, trace=traces.sawtooth(ram).shifted(rng.uniform(0, 600))
        ),
        GuestSpec(
            name="cache",
            ram_bytes=ram,
            trace=traces.cache_heavy(ram).shifted(rng.uniform(0, 1800)),
        ),
    )
    return Scenario(guests=guests, host=overcommitted_host(guests, share=0.75), duration_s=300.0)


def simulate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "balloond", "simulate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the runner ------------------------------------------------------------------------


def test_a_run_is_a_function_of_its_scenario_and_seed() -> None:
    config = load_config(CONFIG)
    first = run(small_scenario(7), EngineController(config))
    again = run(small_scenario(7), EngineController(config))
    assert first == again
    assert run(small_scenario(7), MomController()) == run(small_scenario(7), MomController())
    other = run(small_scenario(8), EngineController(config))
    assert other.metrics != first.metrics
    assert first.metrics.reclaimed_gib_h > 0
    assert first.metrics.balloon_ops > 0
    assert [g.name for g in first.guests] == ["bursty", "idle", "saw", "cache"]


def test_the_engine_reclaims_idle_memory_and_answers_a_surge() -> None:
    ram = 2 * GiB
    # Idle for two minutes (the balloon inflates), then the guest wants 60% of its RAM.
    trace = Trace(
        times_s=(0.0, 120.0, 122.0),
        anon_bytes=(int(ram * 0.1), int(ram * 0.1), int(ram * 0.6)),
        cache_bytes=(int(ram * 0.05),) * 3,
    )
    guests = (GuestSpec(name="g", ram_bytes=ram, trace=trace),)
    scen = Scenario(guests=guests, host=HostSpec(total_bytes=8 * GiB), duration_s=240.0)
    result = run(scen, EngineController(load_config(CONFIG)))
    m = result.metrics
    assert m.oom_kills == 0
    assert m.mean_reclaimed_bytes > 256 * MiB
    # The surge got the guest short (1 GiB in 2 s), and the balloon gave it the memory.
    assert m.surges == m.answered == 1
    assert m.reaction_p95_s is not None
    assert m.reaction_p95_s < m.pressure_s + 1.0


# --- the baselines follow their upstream rules ------------------------------------------


def sample(actual: int, *, free: int, t: float = 0.0) -> GuestSample:
    stats = BalloonStats(
        last_update=1_700_000_000 + int(t),
        free_bytes=free,
        total_bytes=actual,
        available_bytes=free,
    )
    return GuestSample(t_s=t, actual_bytes=actual, stats=stats)


def test_proxmox_moves_each_guest_at_most_100mib_a_round_toward_its_share() -> None:
    pve = ProxmoxController(lambda name, boot: (256 * MiB, boot))
    pve.start(boot_bytes={"a": 4 * GiB, "b": 4 * GiB})
    host = HostSnapshot(total_bytes=8 * GiB, available_bytes=0)  # 100% used: shrink
    targets = pve.poll(
        now_s=0.0,
        samples={"a": sample(4 * GiB, free=3 * GiB), "b": sample(4 * GiB, free=100 * MiB)},
        host=host,
    )
    assert targets == {"a": 4 * GiB - 100 * MiB, "b": 4 * GiB - 100 * MiB}
    roomy = HostSnapshot(total_bytes=8 * GiB, available_bytes=4 * GiB)  # 50% used: grow
    grown = pve.poll(
        now_s=10.0,
        samples={"a": sample(2 * GiB, free=GiB), "b": sample(3 * GiB, free=GiB)},
        host=roomy,
    )
    assert grown == {"a": 2 * GiB + 100 * MiB, "b": 3 * GiB + 100 * MiB}


def test_mom_shrinks_by_at_most_5_percent_only_when_the_host_is_short() -> None:
    mom = MomController()
    mom.start(boot_bytes={"g": 4 * GiB})
    short = HostSnapshot(total_bytes=16 * GiB, available_bytes=GiB)  # 6% free
    first = mom.poll(now_s=0.0, samples={"g": sample(4 * GiB, free=3 * GiB)}, host=short)
    assert first == {"g": int(4 * GiB * 0.95)}
    # The next sample is only averaged in; the policy runs every other sample (10 s).
    assert mom.poll(now_s=5.0, samples={"g": sample(4 * GiB, free=3 * GiB)}, host=short) == {}
    # With the host 50% free nobody shrinks; a guest below its maximum grows 5% a cycle.
    free = HostSnapshot(total_bytes=16 * GiB, available_bytes=8 * GiB)
    for actual, want in ((4 * GiB, {}), (2 * GiB, {"g": int(2 * GiB * 1.05)})):
        roomy = MomController()
        roomy.start(boot_bytes={"g": 4 * GiB})
        assert roomy.poll(now_s=0.0, samples={"g": sample(actual, free=GiB)}, host=free) == want


# --- balloond simulate -------------------------------------------------------------------


def test_simulate_prints_the_report_and_writes_the_chart(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = simulate(
        "--config",
        CONFIG,
        "--trace",
        EXAMPLES_DIR / "bursty.json",
        "--trace",
        EXAMPLES_DIR / "sawtooth.json",
        "--duration",
        "5m",
        "--out",
        out,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("controller"))
    assert "reclaimed GiB-h" in lines[header]
    assert [lines[header + 2 + i].split()[0] for i in range(len(CONTROLLERS))] == list(CONTROLLERS)
    assert "no OOM kill" in done.stdout
    assert "bursty 1GiB (default), sawtooth 1GiB (default)" in done.stdout
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| balloond |" in (out / "report.md").read_text()
    data = json.loads((out / "results.json").read_text())
    assert [r["controller"] for r in data["results"]] == list(CONTROLLERS)
    assert data["duration_s"] == 300.0


def test_a_bad_trace_exits_65_naming_the_file_and_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "web.json"
    bad.write_text(
        json.dumps(
            {
                "format": "balloond-trace/1",
                "points": [
                    {"t_s": 0, "anon_bytes": "100MiB"},
                    {"t_s": 0, "anon_bytes": "200MiB"},
                ],
            }
        )
    )
    done = simulate("--config", CONFIG, "--trace", bad, "--out", tmp_path / "out")
    assert done.returncode == 65
    assert f"{bad}: " in done.stderr
    assert "increase" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()

    notjson = tmp_path / "notjson.json"
    notjson.write_text("{ nope")
    done = simulate("--config", CONFIG, "--trace", notjson)
    assert done.returncode == 65
    assert f"{notjson}: not JSON" in done.stderr

    missing = tmp_path / "missing.json"
    done = simulate("--config", CONFIG, "--trace", missing)
    assert done.returncode == 65
    assert f"{missing}: no such file" in done.stderr


def test_a_bad_config_exits_78_and_bad_sizes_64(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[policies.default]\nfree_low = "lots"\n')
    done = simulate("--config", config, "--trace", EXAMPLES_DIR / "bursty.json")
    assert done.returncode == 78
    assert "policies.default.free_low" in done.stderr
    done = simulate(
        "--config", CONFIG, "--trace", EXAMPLES_DIR / "bursty.json", "--host-memory", "many"
    )
    assert done.returncode == 64
    assert "not a size" in done.stderr


# --- recording with balloond run --record-trace -------------------------------------------


async def test_recorded_traces_replay_in_simulate(tmp_path: Path) -> None:
    sock_dir = tmp_path / "socks"
    sock_dir.mkdir()
    record_dir = tmp_path / "traces"
    config = parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "history_s": 10.0,
                "state_dir": str(tmp_path / "state"),
                "runtime_dir": str(tmp_path / "run"),
            },
            "discovery": {"globs": [f"{sock_dir}/*.sock"], "rescan_interval_s": 0.5},
            "metrics": {"enabled": False},
        }
    )
    ram = 1 * GiB
    specs = [SimGuestSpec("web", ram, traces.sawtooth(ram, period_s=4.0))]
    async with SimFleet(dir=sock_dir, guests=specs), running(config) as daemon:
        assert await until(lambda: daemon.guests["web"].link.state is LinkState.ACTIVE)
        stop = asyncio.Event()
        recorder = TraceRecorder(daemon, record_dir)
        task = asyncio.create_task(recorder.run(stop), name="recorder")

        def reports() -> int:
            history = daemon.guests["web"].history
            return len({s.stats.last_update for s in history if s.stats is not None})

        assert await until(lambda: reports() >= 4)
        stop.set()
        await asyncio.wait_for(task, 60)
        first = Trace.load(record_dir / "web.json")
        assert len(first.times_s) >= 3
        assert first.ram_bytes == ram
        assert first.name == "web"
        # A restart goes on in the same file, after the last point.
        stop = asyncio.Event()
        again = TraceRecorder(daemon, record_dir)
        task = asyncio.create_task(again.run(stop), name="recorder-2")
        seen = reports()
        assert await until(lambda: reports() >= seen + 2 or reports() >= 10)
        stop.set()
        await asyncio.wait_for(task, 60)
    trace = Trace.load(record_dir / "web.json")
    assert len(trace.times_s) > len(first.times_s)
    assert trace.times_s[: len(first.times_s)] == first.times_s
    # Used memory: at least what the workload asked for, at most the guest.
    assert all(0 < a < ram for a in trace.anon_bytes)
    done = simulate(
        "--config", CONFIG, "--trace", record_dir / "web.json", "--out", tmp_path / "out"
    )
    assert done.returncode == 0, done.stderr
    assert "web 1GiB (default)" in done.stdout
