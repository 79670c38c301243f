"""Real guests: the page cache a guest works from, and surges faster than a stats read.

Two measurements on real lab guests (QEMU, the real virtio_balloon driver; TCG here), with
the daemon running in this process:

* **Page cache.** A 512 MiB guest with a virtio-blk disk reads a 240 MiB file set over and
  over (a pass, then a second's pause). Run three times: without balloond, with the policy
  as it was before the working-set signal (``refault_threshold = "0MiB"``, no surge
  reserve) and with the default policy. Over the last minute of each run: the guest's
  size, how long a pass takes (and the throughput that makes), the guest's disk reads and
  page-cache refaults (``/proc/vmstat``).
* **Surges.** A 512 MiB guest that balloond brought to its floor (``min_size = "128MiB"``)
  allocates 300 MiB at 100, 200, 400 MiB/s and at full speed, one after the other, coming
  back to its floor in between, after one learning surge at 100 MiB/s. With deflate-on-oom
  off and on, with the default policy (surge reserve on) and without the reserve: which
  surges it survived, and the floor (and so the memory the reserve costs) before them.
  ``external_backoff_s`` is 30 s here (300 by default) so that a guest that deflated
  itself comes back to its floor within the run.

``python -m benchmarks.guests [--only pagecache|surge]`` (``make bench-guests``) writes
``benchmarks/guests.md``, which ``RESULTS.md`` carries as its "Real guests" section. About
half an hour on two cores; run it on a quiet machine, surges are about timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balloond.core.policy import Reason
from balloond.core.units import MiB
from balloond.programs.plot import draw
from balloond.runtime.config import Config, parse_config
from balloond.service.commands import timeline
from balloond.service.daemon import Daemon
from benchmarks import run as bench_run
from testkit.lab import LabGuest, LabImage, build_image
from testkit.lab.disk import make_file_set, mount_disk, read_passes, start_reader, vmstat

GUEST_MIB = 512
FILES, FILE_MIB = 6, 40
PAGECACHE_RUN_S = 150.0
WINDOW_S = 60.0
SURGE_MIB = 300
SURGE_RATES = (100, 200, 400, 0)  # MiB/s; 0 is memhog's full speed
SETTLE_TIMEOUT_S = 240.0
OLD_POLICY = {"refault_threshold": "0MiB", "surge_reserve_max": "0MiB"}
#: The surge run with deflate-on-oom off and the reserve on, as `balloonctl plot` draws it.
PLOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "surge-plot.png"


def _say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def _config(workdir: Path, guest: LabGuest, **policy: Any) -> Config:
    return parse_config(
        {
            "daemon": {
                "poll_interval_s": 1.0,
                "state_dir": str(workdir / "state"),
                "runtime_dir": str(workdir / "run"),
                "timeline_interval_s": 1.0,
            },
            "guests": [{"name": guest.name, "qmp": str(guest.qmp_socket)}],
            "policies": {"default": {"min_size": "128MiB", **policy}},
        }
    )


@contextlib.asynccontextmanager
async def _daemon(config: Config | None) -> AsyncIterator[Daemon | None]:
    if config is None:
        yield None
        return
    daemon = Daemon(config)
    ready = asyncio.Event()
    task = asyncio.create_task(daemon.run(on_ready=ready.set), name="daemon")
    try:
        await asyncio.wait_for(ready.wait(), 60)
        yield daemon
    finally:
        daemon.request_stop()
        await asyncio.wait_for(task, 60)


async def _actual(guest: LabGuest) -> int:
    reply = await guest.monitor("query-balloon", {})
    return int(reply["actual"])


# --- page cache --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheResult:
    mode: str
    size_mib: float
    passes: int
    pass_s: float
    reads_mib_s: float
    refaults_s: float
    major_faults_s: float
    working_set_decisions: int


async def _pagecache(
    image: LabImage, workdir: Path, mode: str, policy: dict[str, Any] | None
) -> CacheResult:
    disk = workdir / "files.img"
    if not disk.exists():
        make_file_set(disk, files=FILES, file_mib=FILE_MIB)
    guest = LabGuest(
        image, workdir=workdir, name=f"cache-{len(mode)}", memory_mib=GUEST_MIB, disk=disk
    )
    await guest.start()
    try:
        await guest.wait_booted()
        await mount_disk(guest)
        await start_reader(guest)
        config = (
            None if policy is None else _config(workdir / mode.replace(" ", "-"), guest, **policy)
        )
        async with _daemon(config) as daemon:
            await asyncio.sleep(PAGECACHE_RUN_S - WINDOW_S)
            before = await vmstat(guest)
            started = await read_passes(guest)
            sizes = []
            end = time.monotonic() + WINDOW_S
            while time.monotonic() < end:
                sizes.append(await _actual(guest))
                await asyncio.sleep(2.0)
            after = await vmstat(guest)
            passes = (await read_passes(guest))[len(started) :]
            decisions = 0 if daemon is None else daemon.guests[guest.name].decisions["working-set"]
    finally:
        await guest.stop()

    def rate(key: str) -> float:
        return (after.get(key, 0) - before.get(key, 0)) / WINDOW_S

    return CacheResult(
        mode=mode,
        size_mib=statistics.mean(sizes) / MiB,
        passes=len(passes),
        pass_s=statistics.mean(p.seconds for p in passes) if passes else float("nan"),
        reads_mib_s=rate("pgpgin") / 1024,  # pgpgin counts KiB
        refaults_s=rate("workingset_refault_file"),
        major_faults_s=rate("pgmajfault"),
        working_set_decisions=decisions,
    )


def _cache_table(results: Sequence[CacheResult]) -> list[str]:
    set_mib = FILES * FILE_MIB
    lines = [
        "| run | guest size | reclaimed | passes | pass time | throughput | disk reads "
        "| refaults | major faults | working-set decisions |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.mode} | {r.size_mib:.0f} MiB | {GUEST_MIB - r.size_mib:.0f} MiB | {r.passes} "
            f"| {r.pass_s:.2f} s | {set_mib / r.pass_s:.0f} MiB/s | {r.reads_mib_s:.1f} MiB/s "
            f"| {r.refaults_s:.0f}/s | {r.major_faults_s:.0f}/s | {r.working_set_decisions} |"
        )
    return lines


# --- surges ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SurgeResult:
    deflate_on_oom: bool
    reserve: bool
    floor_mib: float
    survived: dict[int, bool]

    @property
    def fastest(self) -> str:
        ok = [r for r in SURGE_RATES if self.survived.get(r)]
        if not ok:
            return "none"
        fastest = 0 if 0 in ok else max(ok)
        return "full speed" if fastest == 0 else f"{fastest} MiB/s"


async def _settled(daemon: Daemon, name: str) -> int:
    """Wait until balloond has the guest at its floor (or in band) for 5 s; its size."""
    ctrl = daemon.guests[name]
    calm = 0
    end = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < end:
        d = ctrl.last_decision
        steady = d is not None and d.reason in (Reason.AT_FLOOR, Reason.IN_BAND, Reason.MIN_CHANGE)
        calm = calm + 1 if steady else 0
        if calm >= 10 and ctrl.history:
            return ctrl.history[-1].actual_bytes
        await asyncio.sleep(0.5)
    raise TimeoutError(f"{name} did not settle at its floor in {SETTLE_TIMEOUT_S:.0f}s")


async def _surge(guest: LabGuest, rate: int) -> bool:
    kills = await guest.oom_kills()
    hog = await guest.start_memhog(mib=SURGE_MIB, rate_mib_s=rate)
    done = await hog.wait_allocated(timeout_s=120)
    await asyncio.sleep(3)
    await hog.stop()
    return done and await guest.oom_kills() == kills


async def _surges(
    image: LabImage,
    workdir: Path,
    *,
    deflate_on_oom: bool,
    reserve: bool,
    plot: Path | None = None,
) -> SurgeResult:
    name = f"surge-{'doo' if deflate_on_oom else 'nodoo'}-{'r' if reserve else 'nr'}"
    guest = LabGuest(
        image, workdir=workdir, name=name, memory_mib=GUEST_MIB, deflate_on_oom=deflate_on_oom
    )
    await guest.start()
    policy: dict[str, Any] = {"external_backoff_s": 30.0}
    if not reserve:
        policy["surge_reserve_max"] = "0MiB"
    try:
        await guest.wait_booted()
        async with _daemon(_config(workdir / name, guest, **policy)) as daemon:
            assert daemon is not None
            await _settled(daemon, name)
            await _surge(guest, 100)  # the guest's history: one surge it lived through
            floor = await _settled(daemon, name)
            survived = {}
            for rate in SURGE_RATES:
                survived[rate] = await _surge(guest, rate)
                _say(
                    f"  {name}: {f'{rate} MiB/s' if rate else 'full speed'}: "
                    + ("survived" if survived[rate] else "OOM kill")
                )
                await _settled(daemon, name)
            if plot is not None:
                _say(draw(timeline(daemon.guests[name], since=None), plot))
    finally:
        await guest.stop()
    return SurgeResult(deflate_on_oom, reserve, floor / MiB, survived)


def _surge_table(results: Sequence[SurgeResult]) -> list[str]:
    rates = [f"{r} MiB/s" if r else "full speed" for r in SURGE_RATES]
    lines = [
        "| deflate-on-oom | surge reserve | floor before the surges | "
        + " | ".join(rates)
        + " | fastest survived |",
        "|---|---|---:|" + "---|" * len(rates) + "---|",
    ]
    for r in results:
        cells = ["survived" if r.survived[rate] else "OOM kill" for rate in SURGE_RATES]
        lines.append(
            f"| {'on' if r.deflate_on_oom else 'off'} | {'on (default)' if r.reserve else 'off'} "
            f"| {r.floor_mib:.0f} MiB | " + " | ".join(cells) + f" | {r.fastest} |"
        )
    return lines


# --- the report --------------------------------------------------------------------------


CACHE_HEADING = "### Page cache"
CACHE_TEXT = (
    f"A {GUEST_MIB} MiB guest reads a {FILES * FILE_MIB} MiB file set from a virtio-blk disk "
    'over and over (`cat` of every file, then a second\'s pause), `min_size = "128MiB"`. '
    f"Each run lasts {PAGECACHE_RUN_S:.0f} s; the numbers are over its last {WINDOW_S:.0f} s. "
    "Disk reads and refaults are the guest's own counters (`pgpgin`, "
    "`workingset_refault_file`); the throughput is the file set over the mean pass time. "
    "The old default policy is the default without the working-set signal and the surge "
    "reserve."
)
SURGE_HEADING = "### Surges faster than a stats read"
SURGE_TEXT = (
    f'A {GUEST_MIB} MiB guest at its floor (`min_size = "128MiB"`, after one learning surge '
    f"of {SURGE_MIB} MiB at 100 MiB/s) allocates {SURGE_MIB} MiB at each rate in turn "
    '(memhog), back at its floor in between. "OOM kill": the guest\'s OOM killer ended '
    "memhog. The floor before the surges is what the guest keeps; the difference between "
    "reserve on and off is the memory the reserve costs."
)


def _head() -> list[str]:
    return [
        bench_run.GUESTS_HEADING,
        "",
        "Written by `benchmarks/guests.py` (`make bench-guests`, or `python -m "
        "benchmarks.guests --only pagecache|surge` for one section); do not edit by hand.",
        "",
        *bench_run.machine(),
        "- Guests: QEMU under TCG, 512 MiB, the lab's Linux 6.1 guest, 1 s stats interval",
        "",
    ]


def _sections(text: str) -> dict[str, str]:
    """The ``###`` sections of an earlier guests.md, by heading."""
    out: dict[str, str] = {}
    for chunk in text.split("\n### ")[1:]:
        heading, _, body = chunk.partition("\n")
        out[f"### {heading.strip()}"] = f"### {heading.strip()}\n{body.rstrip()}\n"
    return out


async def _main(only: str | None) -> dict[str, str]:
    """The sections measured (heading -> Markdown)."""
    image = build_image()
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="balloond-bench-") as tmp:
        workdir = Path(tmp)
        if only in (None, "pagecache"):
            started = time.monotonic()
            results = []
            for mode, policy in (
                ("no balloond", None),
                ("balloond, old default policy", OLD_POLICY),
                ("balloond, default policy", {}),
            ):
                _say(f"page cache: {mode}")
                results.append(await _pagecache(image, workdir, mode, policy))
            out[CACHE_HEADING] = _section(
                [
                    CACHE_HEADING,
                    "",
                    CACHE_TEXT,
                    "",
                    *_cache_table(results),
                    "",
                    _measured("pagecache", started),
                ]
            )
        if only in (None, "surge"):
            started = time.monotonic()
            surges = []
            for doo in (False, True):
                for reserve in (True, False):
                    _say(
                        f"surges: deflate-on-oom {'on' if doo else 'off'}, "
                        f"reserve {'on' if reserve else 'off'}"
                    )
                    plot = PLOT if (doo, reserve) == (False, True) else None
                    surges.append(
                        await _surges(
                            image, workdir, deflate_on_oom=doo, reserve=reserve, plot=plot
                        )
                    )
            out[SURGE_HEADING] = _section(
                [
                    SURGE_HEADING,
                    "",
                    SURGE_TEXT,
                    "",
                    *_surge_table(surges),
                    "",
                    "The first row's guest as `balloonctl plot` draws its timeline (each "
                    "change marked, coloured by its reason):",
                    "",
                    "![surges on a real guest](../docs/images/surge-plot.png)",
                    "",
                    _measured("surge", started),
                ]
            )
    return out


def _section(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _measured(only: str, started: float) -> str:
    return (
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in "
        f"{(time.monotonic() - started) / 60:.0f} minutes "
        f"(`python -m benchmarks.guests --only {only}`)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.guests", description=__doc__)
    ap.add_argument("--only", choices=("pagecache", "surge"), help="one measurement only")
    args = ap.parse_args(argv)
    measured = asyncio.run(_main(args.only))
    earlier = (
        _sections(bench_run.GUESTS.read_text(encoding="utf-8")) if bench_run.GUESTS.exists() else {}
    )
    sections = {**earlier, **measured}
    order = [h for h in (CACHE_HEADING, SURGE_HEADING) if h in sections]
    text = "\n".join(_head()) + "\n" + "\n".join(sections[h] for h in order)
    print(text)
    bench_run.GUESTS.write_text(text, encoding="utf-8")
    if bench_run.REPORT.exists():
        report = bench_run.REPORT.read_text(encoding="utf-8")
        bench_run.REPORT.write_text(bench_run.with_carried(report), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
