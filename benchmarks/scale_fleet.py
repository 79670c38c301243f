"""The simulated fleet the scale benchmark drives balloond against, with a stopwatch on it.

It runs in a process of its own (``python -m benchmarks.scale_fleet DIR N WORKLOAD``), so
the simulator's CPU never counts against the daemon's. It serves N simulated QEMU guests
(:class:`~testkit.sim.SimFleet`, one QMP unix socket each) whose workloads breathe, so the
daemon has balloons to move all the time (WORKLOAD ``breathing``; ``idle`` guests sit
still), and it times the daemon from the guests' side, on one clock: per guest, when it
answered a ``guest-stats`` read, and when a ``balloon`` command arrived. Their difference
is the daemon's stats-to-command latency: the policy decision, the audit record and the
log line (and a query-balloon while the balloon moves), plus any wait in either loop.

It also watches itself (CPU, event-loop lag), because a simulator that cannot keep up would
make the daemon look slow.

Protocol: one JSON object per line. It prints ``{"ready": N}`` once every socket listens,
then answers each request read from stdin:

* ``{"op": "status"}``: guests with a client, guests polled at least once, totals.
* ``{"op": "window"}``: start a measurement window (clears what was measured so far).
* ``{"op": "report"}``: what the window measured (latencies in seconds, counts, own load).
* ``{"op": "quit"}``: close the fleet and exit.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from balloond.core.units import GiB
from balloond.replay.traces import diurnal, idle
from benchmarks.pipe import answer_requests, say
from testkit.sim import SimFleet, SimGuestSpec, Trace
from testkit.sim import commands as sim_commands
from testkit.sim.qmp_server import SimGuest

#: Every simulated guest's RAM.
RAM_BYTES = 1 * GiB
#: One breath of the workload: anonymous demand swings between LOW and HIGH of RAM and back,
#: each guest at its own phase, so the fleet as a whole asks for balloon moves at a steady
#: rate (a guest deflates as its demand rises and is inflated again as it falls).
BREATH_S = 120.0
LOW_FRAC = 0.15
HIGH_FRAC = 0.55
#: How often the fleet's own loop-lag probe wakes.
PROBE_S = 0.05

log = logging.getLogger("benchmarks.scale_fleet")


def breathing_trace(seed: int) -> Trace:
    """A one-breath-per-``BREATH_S`` workload, started at a phase picked by ``seed``."""
    trace = diurnal(RAM_BYTES, period_s=BREATH_S, low_frac=LOW_FRAC, high_frac=HIGH_FRAC, steps=24)
    return trace.shifted(random.Random(seed).uniform(0, BREATH_S))


WORKLOADS = ("breathing", "idle")


def guest_specs(n: int, workload: str) -> list[SimGuestSpec]:
    width = max(4, len(str(n)))
    return [
        SimGuestSpec(
            f"g{i:0{width}d}",
            RAM_BYTES,
            breathing_trace(i) if workload == "breathing" else idle(RAM_BYTES),
        )
        for i in range(n)
    ]


class Stopwatch:
    """Timestamps guest-stats answers and balloon commands, per guest, on one clock.

    It wraps two entries of the simulator's command table (:data:`COMMANDS`), the
    simulator's one dispatch point, so the guests themselves stay untouched.
    """

    def __init__(self) -> None:
        self.stats_answered: dict[str, float] = {}
        self.polled: set[str] = set()
        self.latencies_s: list[float] = []
        self.stats_reads = 0
        self.commands = 0
        self.queries = 0
        self.window_started = time.monotonic()
        self.lags_s: list[float] = []
        self.cpu_at_start = _cpu_s()

    def start_window(self) -> None:
        self.latencies_s = []
        self.lags_s = []
        self.stats_reads = 0
        self.commands = 0
        self.queries = 0
        self.window_started = time.monotonic()
        self.cpu_at_start = _cpu_s()

    def install(self) -> None:
        table = sim_commands.COMMANDS
        get_params, qom_get = table["qom-get"]
        balloon_params, balloon = table["balloon"]
        query_params, query_balloon = table["query-balloon"]

        def timed_qom_get(guest: SimGuest, session: sim_commands.Session, args: Any) -> Any:
            result = qom_get(guest, session, args)
            if args["property"] == "guest-stats":
                self.stats_answered[guest.name] = time.monotonic()
                self.polled.add(guest.name)
                self.stats_reads += 1
            return result

        def timed_balloon(guest: SimGuest, session: sim_commands.Session, args: Any) -> Any:
            answered = self.stats_answered.get(guest.name)
            if answered is not None:
                self.latencies_s.append(time.monotonic() - answered)
            self.commands += 1
            return balloon(guest, session, args)

        def counted_query(guest: SimGuest, session: sim_commands.Session, args: Any) -> Any:
            self.queries += 1
            return query_balloon(guest, session, args)

        table["qom-get"] = (get_params, timed_qom_get)
        table["query-balloon"] = (query_params, counted_query)
        table["balloon"] = (balloon_params, timed_balloon)

    async def probe(self) -> None:
        """Record how late this process's own loop wakes (its ability to keep up)."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(PROBE_S)
            self.lags_s.append(max(0.0, loop.time() - before - PROBE_S))

    def report(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.window_started
        return {
            "window_s": elapsed,
            "latencies_s": self.latencies_s,
            "stats_reads": self.stats_reads,
            "commands": self.commands,
            "queries": self.queries,
            "cpu_pct": 100 * (_cpu_s() - self.cpu_at_start) / elapsed if elapsed else 0.0,
            "lag_p99_s": _quantile(self.lags_s, 0.99),
            "lag_max_s": max(self.lags_s, default=0.0),
        }


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def serve(directory: Path, n: int, workload: str) -> None:
    watch = Stopwatch()
    watch.install()

    async with SimFleet(dir=directory, guests=guest_specs(n, workload)) as fleet:
        # The fleet's objects (models, traces, sockets) live as long as the process: keep
        # the garbage collector from walking them again and again, a pause that would
        # count against the daemon.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        probe = asyncio.create_task(watch.probe(), name="fleet:lag-probe")

        def status() -> dict[str, Any]:
            return {
                "connected": sum(1 for g in fleet if g.has_client),
                "polled": len(watch.polled),
                "stats_reads": watch.stats_reads,
                "commands": watch.commands,
            }

        def window() -> dict[str, Any]:
            watch.start_window()
            return {"ok": True}

        say({"ready": len(fleet)})
        try:
            await answer_requests({"status": status, "window": window, "report": watch.report})
        finally:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    directory, n, workload = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if workload not in WORKLOADS:
        sys.exit(f"workload must be one of {', '.join(WORKLOADS)}, not {workload!r}")
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(directory, n, workload))
        return
    # uvloop makes the simulator cheaper (the daemon runs on it too).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(directory, n, workload))


if __name__ == "__main__":
    main()
