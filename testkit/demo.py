"""``make demo`` (``python -m testkit.demo``): the daemon driving three real lab guests.

It boots three small guests from :mod:`testkit.lab`, runs the daemon in-process with the
example policy from ``config/balloond.toml`` and plays a scripted workload:

* ``idle``: does nothing, so balloond reclaims its idle memory down to the floor;
* ``ramp``: after a quarter of the run (once balloond has reclaimed it, half the run at
  the latest) allocates a large block at 50 MiB/s (balloond must
  deflate in time to avoid an OOM kill), and releases it later (balloond reclaims again);
* ``steady``: holds a moderate working set throughout.

A table of each guest's size and available memory is printed while it runs; a summary
(memory reclaimed, deflates under pressure, OOM kills) ends it. Every QEMU it started is
stopped on the way out, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balloond.core.events import BalloonChange
from balloond.core.policy import Reason
from balloond.core.policy.decision import PRESSURE_REASONS
from balloond.core.units import MiB, fmt_mib
from balloond.programs.balloond import EX_INTERRUPTED, run_async

GUEST_MIB = 512
#: Scripted workloads: (guest, start as a fraction of the run, MiB, MiB/s, stop fraction).
WORKLOADS = (
    ("steady", 0.0, 120, 60, None),
    ("ramp", 0.25, 320, 50, 0.7),
)


@dataclass
class _Tally:
    deflates_under_pressure: int = 0
    inflates: int = 0
    changes: int = 0


def _example_config_path() -> Path | None:
    here = Path(__file__).resolve().parent.parent / "config" / "balloond.toml"
    return here if here.is_file() else None


def _table(daemon: Any, elapsed_s: float, duration_s: float) -> str:
    lines = [
        f"balloond demo  t={elapsed_s:5.1f}s / {duration_s:.0f}s",
        f"{'guest':<8} {'state':<10} {'actual MiB':>10} {'avail MiB':>10} {'target MiB':>10}  "
        "last decision",
    ]
    for name in sorted(daemon.guests):
        ctrl = daemon.guests[name]
        last = ctrl.history[-1] if ctrl.history else None
        stats = last.stats if last else None
        decision = ctrl.last_decision
        lines.append(
            f"{name:<8} {ctrl.link.state.value:<10} "
            f"{fmt_mib(last.actual_bytes if last else None):>10} "
            f"{fmt_mib(stats.available_bytes if stats else None):>10} "
            f"{fmt_mib(ctrl.target_bytes):>10}  "
            f"{decision.reason if decision else '-'}: "
            f"{(decision.explanation if decision else '')[:70]}"
        )
    return "\n".join(lines)


async def run_demo(*, duration_s: float = 60.0, n_guests: int = 3) -> int:
    """Boot the guests, run the daemon with scripted workloads, print a summary.

    Returns 0 when the run ended without an OOM kill in any guest, 1 otherwise.
    """
    from balloond.programs.logs import setup_logging
    from balloond.runtime.config import load_config
    from balloond.service.daemon import Daemon
    from testkit.lab import LabGuest, build_image

    setup_logging("text")
    names = ["idle", "ramp", "steady"][: max(1, min(3, n_guests))]
    print("==> preparing the lab image (cached after the first run)", flush=True)
    image = await asyncio.to_thread(build_image)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    workdir = Path(tempfile.mkdtemp(prefix="balloond-demo-"))
    guests = {
        name: LabGuest(image, workdir=workdir / name, name=name, memory_mib=GUEST_MIB)
        for name in names
    }
    tally = _Tally()
    oom_total = 0
    keep_logs = True  # until the run ends well: the guests' logs explain a failure
    daemon_task: asyncio.Task[None] | None = None
    try:
        print(f"==> booting {len(guests)} guests of {GUEST_MIB} MiB", flush=True)
        await asyncio.gather(*(g.start() for g in guests.values()))
        await asyncio.gather(*(g.wait_booted(timeout_s=120) for g in guests.values()))
        example = _example_config_path()
        base = load_config(example) if example else None
        config = _demo_config(base, guests, workdir)
        daemon = Daemon(config)

        def count(_ctrl: Any, change: BalloonChange) -> None:
            record = change.record
            if "new_bytes" not in record or record.get("actor") == "guest":
                return
            tally.changes += 1
            if record.get("reason") in PRESSURE_REASONS:
                tally.deflates_under_pressure += 1
            elif (record.get("old_bytes") or 0) > record["new_bytes"]:
                tally.inflates += 1

        daemon.subscribe(count)
        print(
            f"==> running balloond for {duration_s:.0f}s "
            f"(policy from {example or 'built-in defaults'}; Ctrl-C ends early)",
            flush=True,
        )
        daemon_task = asyncio.create_task(daemon.run(), name="daemon")

        def settled(name: str) -> bool:
            ctrl = daemon.guests.get(name)
            decision = ctrl.last_decision if ctrl is not None else None
            return decision is not None and decision.reason in (Reason.AT_FLOOR, Reason.IN_BAND)

        script = asyncio.create_task(_script(guests, duration_s, stop, settled), name="workloads")
        started = time.monotonic()
        tty = sys.stdout.isatty()
        every = 1.0 if tty else 5.0
        while not stop.is_set() and (elapsed := time.monotonic() - started) < duration_s:
            table = _table(daemon, elapsed, duration_s)
            print(("\x1b[H\x1b[2J" if tty else "") + table + ("" if tty else "\n"), flush=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stop.wait()
        print(_table(daemon, time.monotonic() - started, duration_s), flush=True)
        script.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await script
        reclaimed = sum(
            (c.link.boot_bytes or 0) - c.history[-1].actual_bytes
            for c in daemon.guests.values()
            if c.history
        )
        daemon.request_stop()
        await daemon_task
        daemon_task = None
        for g in guests.values():
            with contextlib.suppress(Exception):
                oom_total += await g.oom_kills()
        print()
        print("==> summary")
        print(
            f"    memory reclaimed now:        {reclaimed / MiB:.0f} MiB of "
            f"{len(guests) * GUEST_MIB} MiB"
        )
        print(
            f"    balloon changes:             {tally.changes} "
            f"({tally.inflates} inflates, {tally.deflates_under_pressure} deflates under pressure)"
        )
        print(f"    OOM kills in guests:         {oom_total} (0 expected)")
        keep_logs = oom_total > 0
        return 0 if oom_total == 0 else 1
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
        if daemon_task is not None:  # the run ended by an error: stop the daemon first
            daemon_task.cancel()
            await asyncio.gather(daemon_task, return_exceptions=True)
        await asyncio.gather(*(g.stop() for g in guests.values()), return_exceptions=True)
        print("==> all guests stopped", flush=True)
        if keep_logs:
            print(f"==> guest logs kept in {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _script(
    guests: dict[str, Any],
    duration_s: float,
    stop: asyncio.Event,
    settled: Callable[[str], bool] = lambda name: True,
) -> None:
    """Start and stop the scripted memory workloads at their times. A load that starts
    later waits, until half the run at most, for balloond to have reclaimed its guest
    (``settled``): the demo shows a surge met from the floor, not one that lands on a
    guest still being inflated with stats a second old."""
    events: list[tuple[float, str, str, int, int]] = []
    for name, start, mib, rate, end in WORKLOADS:
        if name in guests:
            events.append((start * duration_s, "start", name, mib, rate))
            if end is not None:
                events.append((end * duration_s, "stop", name, mib, rate))
    events.sort()
    hogs: dict[str, Any] = {}
    t0 = time.monotonic()
    try:
        for at, what, name, mib, rate in events:
            delay = at - (time.monotonic() - t0)
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stop.wait()
            if what == "start" and at > 0:
                latest = t0 + duration_s / 2
                # A decision is a state, not an event: look ten times a second.
                while not settled(name) and time.monotonic() < latest and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.1):
                            await stop.wait()
            if stop.is_set():
                return
            if what == "start":
                print(f"==> {name}: allocating {mib} MiB at {rate} MiB/s", flush=True)
                hogs[name] = await guests[name].start_memhog(mib=mib, rate_mib_s=rate)
            elif name in hogs:
                print(f"==> {name}: releasing its {mib} MiB", flush=True)
                await hogs.pop(name).stop()
    finally:
        for hog in hogs.values():
            with contextlib.suppress(Exception):
                await hog.stop()


def _demo_config(base: Any, guests: dict[str, Any], workdir: Path) -> Any:
    """The example config with the demo's guests, state dir and a 1 s interval."""
    from balloond.runtime.config import Config

    doc: dict[str, Any] = base.model_dump(mode="python") if base is not None else {}
    daemon = dict(doc.get("daemon", {}))
    daemon.update(
        poll_interval_s=1.0,
        state_dir=str(workdir / "state"),
        runtime_dir=str(workdir / "run"),
        audit_log=str(workdir / "state" / "audit.jsonl"),
        dry_run=False,
    )
    doc["daemon"] = daemon
    doc["guests"] = [{"name": n, "qmp": str(g.qmp_socket)} for n, g in guests.items()]
    doc["discovery"] = {**doc.get("discovery", {}), "globs": []}
    for section in ("mqtt", "metrics", "control"):
        doc.pop(section, None)
    return Config.model_validate(doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m testkit.demo",
        description="balloond driving three real lab guests; ends by itself.",
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--guests", type=int, default=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        return run_async(run_demo(duration_s=args.duration, n_guests=args.guests))
    except KeyboardInterrupt:
        return EX_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
