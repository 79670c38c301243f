"""Scale benchmark: the real daemon against 100, 1,000 and 2,000 simulated guests.

balloond should manage every guest of a big host from one process, at a one-second poll
interval, without becoming a load of its own. This benchmark runs the simulated fleet
(:mod:`benchmarks.scale_fleet`) in one process and ``balloond run`` in another, each pinned
to its own core where the machine has two, lets the daemon connect to every guest and settle,
then measures over a window:

* daemon CPU, as a percentage of one core (``utime + stime`` from ``/proc/PID/stat``);
* daemon memory: resident set at the end of the window (VmRSS) and its peak since start
  (VmHWM, which includes connecting to every guest);
* stats-to-command latency: for each ``balloon`` command, the time from the simulator's
  answer to the guest-stats read that led to it until the command arrived (both stamped by
  the simulator, on one clock);
* event-loop lag: the daemon's own ``balloond_event_loop_lag_seconds`` metric (its worst
  wake-up delay over ten seconds), scraped once after the window; how long the scrape took
  and how long it held the daemon's loop at once (``balloond_scrape_loop_seconds``) are
  reported;
* how much work it did: balloon commands per second and polls per guest per second (1.00 is
  every guest read once a second), and the simulator's own CPU and loop lag, which show
  whether the simulator kept up.

The guests' workloads breathe, so the daemon moves balloons all the time; in full mode one
more run at 2,000 guests has idle guests, which shows the cost of polling alone.

The floor: in each run marked ``floor``, once the daemon's own window is measured, two
clients (:mod:`benchmarks.scale_floor`) run in turn beside it, on a second simulated fleet
of the same size, pinned to the daemon's core: a bare qemu.qmp client and a raw-streams
client, each sending the daemon's traffic (the same polls, and the daemon's measured rates
of query-balloon and balloon). These machines vary 2-3x from hour to hour, and by 10-20%
from one minute to the next, so the daemon is judged as a multiple of that floor with both
measured over the same window on the same core (measured one after the other, the same
daemon's ratio moved by +-15% from run to run); a fixed Python loop timed at the start is
reported as the run's speed reference.

Targets (reported, not asserted): the daemon's CPU at most 1.3x the qemu.qmp floor at 1,000
and 2,000 guests; at 2,000 guests 1.00 polls per guest per second, p99 stats-to-command
latency and event-loop lag at most 50 ms, a scrape holding the loop at most 10 ms, and RSS
at most 150 MiB.

``python -m benchmarks.scale [--quick] [--guests N ...] [--out DIR]`` runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

REPO = Path(__file__).resolve().parents[1]
POLL_INTERVAL_S = 1.0
TARGET_GUESTS = 2_000
TARGET_RSS_MIB = 150.0
TARGET_P99_MS = 50.0
TARGET_RATIO = 1.3
TARGET_LAG_MS = 50.0
TARGET_SCRAPE_MS = 10.0
#: A window beside the floor counts for the ratio target only when both sides made at
#: least this many polls per guest per second: below it they did not make the same
#: traffic (per poll is then a guess at what the missing polls would have cost).
STEADY_POLLS = 0.95
#: The floor clients need no history: a short settle, then the same window as the daemon.
FLOOR_WARMUP_S = 10.0
#: Generous limits for starting and stopping; hitting one is a failure, not a measurement.
FLEET_START_S = 120.0
CONNECT_ALL_S = 180.0
STOP_S = 15.0

Progress = Callable[[str], None]


#: How the daemon reaches the guests (``balloonctl status``'s VIA).
WAYS = ("qmp", "qmp-shared", "libvirt")


@dataclass(frozen=True, slots=True)
class Run:
    """One fleet: its size, its workload (``breathing`` or ``idle``), how the daemon
    reaches it (:data:`WAYS`), and whether the floor clients run on it too."""

    guests: int
    workload: str = "breathing"
    way: str = "qmp"
    floor: bool = False

    @property
    def label(self) -> str:
        extra = [w for w in (self.workload, self.way) if w not in ("breathing", "qmp")]
        return f"{self.guests:,}" + (f" ({', '.join(extra)})" if extra else "")


@dataclass(frozen=True, slots=True)
class Settings:
    runs: tuple[Run, ...]
    warmup_s: float
    window_s: float


#: Full: settle for longer than the daemon's default history (60 s of samples per guest), so
#: memory is measured with every guest's history full. Quick: a first look, memory still
#: growing.
FULL = Settings(
    runs=(
        Run(500, floor=True),
        Run(1_000, floor=True),
        Run(2_000, floor=True),
        Run(2_000, "idle"),
        Run(1_000, way="qmp-shared"),
        Run(2_000, way="qmp-shared"),
        Run(1_000, "idle", way="libvirt"),
    ),
    warmup_s=62.0,
    window_s=40.0,
)
QUICK = Settings(
    runs=(
        Run(500, floor=True),
        Run(2_000, floor=True),
        Run(1_000, way="qmp-shared"),
        Run(200, "idle", way="libvirt"),
    ),
    warmup_s=8.0,
    window_s=15.0,
)


class Paired(NamedTuple):
    """A floor client's window, measured beside the running daemon: the client's CPU % of
    a core, polls/guest/s and RSS (what its connections cost), the daemon's CPU and polls
    over the same window, and the two simulated fleets' own CPU and worst loop lag (a fleet
    that cannot keep up slows the client it serves)."""

    cpu_pct: float
    polls: float
    rss_mib: float
    daemon_cpu_pct: float
    daemon_polls: float
    #: The daemon's fleet's CPU and the floor's fleet's, % of a core.
    fleets_cpu_pct: tuple[float, float]
    fleets_lag_p99_ms: float

    @property
    def steady(self) -> bool:
        """Both sides kept to their polls (at least :data:`STEADY_POLLS` per guest per
        second): the same traffic, so the ratio says what it should."""
        return min(self.polls, self.daemon_polls) >= STEADY_POLLS

    @property
    def ratio(self) -> float | None:
        """The daemon's CPU per poll as a multiple of the client's (per poll: the same
        traffic, should either fall behind)."""
        if self.polls <= 0 or self.daemon_polls <= 0 or self.cpu_pct <= 0:
            return None
        return (self.daemon_cpu_pct / self.daemon_polls) / (self.cpu_pct / self.polls)


@dataclass(frozen=True, slots=True)
class Result:
    """One run's numbers."""

    run: Run
    startup_s: float
    cpu_pct: float
    rss_mib: float
    hwm_mib: float
    #: None where nothing times it (libvirt: no simulator behind the domains).
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    commands_per_s: float
    polls_per_guest_s: float
    loop_lag_ms: float | None
    scrape_ms: float
    qmp_timeouts: int | None
    #: The other side's CPU (the simulator, or libvirtd) and the simulator's loop lag.
    sim_cpu_pct: float
    sim_lag_p99_ms: float | None
    #: query-balloon commands per second the daemon sent (the floor clients send as many).
    queries_per_s: float = 0.0
    #: How long the last /metrics scrape held the daemon's event loop.
    scrape_loop_ms: float | None = None
    #: The floor beside the daemon, in the same run: a bare qemu.qmp client and a
    #: raw-streams client doing the daemon's traffic.
    beside_qmp: Paired | None = None
    beside_raw: Paired | None = None

    @property
    def ratio(self) -> float | None:
        """The daemon's CPU per poll as a multiple of the qemu.qmp floor's."""
        return None if self.beside_qmp is None else self.beside_qmp.ratio


# --- processes -------------------------------------------------------------------------


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """(daemon cores, simulator cores): the last core for the daemon, the rest for the
    simulator and this process; None when there is only one core to use."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[-1]}, set(cores[:-1])


class FleetProcess:
    """The simulator child: JSON lines on its stdin and stdout."""

    def __init__(self, directory: Path, run: Run, *, cores: set[int] | None, log: IO[str]) -> None:
        argv = [sys.executable, "-m", "benchmarks.scale_fleet", str(directory)]
        self.proc = subprocess.Popen(
            [*argv, str(run.guests), run.workload],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        if cores:
            os.sched_setaffinity(self.proc.pid, cores)

    def read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                raise RuntimeError(f"the simulator did not answer within {timeout_s:g}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the simulator exited (status {self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, op: str, timeout_s: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op}) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
        _wait_or_kill(self.proc)


def start_daemon(config: Path, *, log: IO[str], cores: set[int] | None) -> subprocess.Popen[bytes]:
    """``balloond run`` on ``config``, its log to ``log``, pinned to ``cores`` if given."""
    daemon = subprocess.Popen(
        [sys.executable, "-m", "balloond", "run", "--config", str(config)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    if cores:
        os.sched_setaffinity(daemon.pid, cores)
    return daemon


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as systemd stops it; killed if it does not end in time."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        _wait_or_kill(daemon)


def _wait_or_kill(proc: subprocess.Popen[Any]) -> None:
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(work: Path, sockets: Path, port: int, *, way: str = "qmp", uri: str = "") -> Path:
    """The daemon's config: the fleet found by a discovery glob (shared globs for
    ``qmp-shared``) or on a libvirt ``uri``, metrics on ``port``, the default policy; state
    (audit log included) and the control socket live in ``work``."""
    path = work / "balloond.toml"
    source = {
        "qmp": f'[discovery]\nglobs = ["{sockets}/*.sock"]',
        "qmp-shared": f'[discovery]\nshared_globs = ["{sockets}/*.sock"]',
        "libvirt": f'[libvirt]\nuris = ["{uri}"]',
    }[way]
    path.write_text(
        f"""\
[daemon]
poll_interval_s = {POLL_INTERVAL_S}
state_dir = "{work / "state"}"
runtime_dir = "{work / "run"}"
log_format = "text"

{source}

[metrics]
enabled = true
address = "127.0.0.1:{port}"
""",
        encoding="utf-8",
    )
    return path


class Proc:
    """A process's CPU time and memory, from /proc."""

    TICK_S = 1 / os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_s(self) -> float:
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) * self.TICK_S  # utime, stime

    def status_mib(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
        raise KeyError(key)


def scrape(port: int) -> tuple[dict[str, float], float]:
    """The daemon's metrics summed by name (labels dropped), and the scrape's seconds."""
    started = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    took = time.monotonic() - started
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        sums[name] = sums.get(name, 0.0) + float(value)
    return sums, took


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    # Short and under /tmp: unix socket paths must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="bscale-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --- one run ---------------------------------------------------------------------------


def run_one(run: Run, *, settings: Settings, progress: Progress, logs: Path) -> Result:
    """Start the fleet and the daemon, settle, measure one window, stop both."""
    if run.way == "libvirt":
        return run_libvirt(run, settings=settings, progress=progress, logs=logs)
    daemon_cores, sim_cores = cpu_plan()
    name = f"scale-{run.guests}-{run.workload}"
    with (
        workdir() as work,
        open(logs / f"{name}-sim.log", "w") as sim_log,
        open(logs / f"{name}-daemon.log", "w") as daemon_log,
    ):
        sockets = work / "q"
        fleet = FleetProcess(sockets, run, cores=sim_cores, log=sim_log)
        # The floor clients get a fleet of their own, so that they run beside the daemon.
        floor_sockets = work / "f"
        floor_fleet = (
            FleetProcess(floor_sockets, run, cores=sim_cores, log=sim_log) if run.floor else None
        )
        daemon: subprocess.Popen[bytes] | None = None
        try:
            for each in (fleet, floor_fleet):
                if each is None:
                    continue
                ready = each.read(FLEET_START_S)
                if ready.get("ready") != run.guests:
                    raise RuntimeError(f"the simulator started {ready}, not {run.guests} guests")
            port = free_port()
            config = write_config(work, sockets, port, way=run.way)
            started = time.monotonic()
            daemon = start_daemon(config, log=daemon_log, cores=daemon_cores)
            startup_s = _wait_all_polled(fleet, daemon, n=run.guests, started=started)
            progress(f"  {run.label} guests: every guest polled after {startup_s:.1f}s; settling")
            time.sleep(settings.warmup_s)
            result = _measure(
                run,
                window_s=settings.window_s,
                fleet=fleet,
                daemon=daemon,
                port=port,
                startup_s=startup_s,
                progress=progress,
            )
            if floor_fleet is None:
                return result
            floors = {}
            for mode in ("qmp", "raw"):
                floors[mode] = run_floor(
                    floor_fleet,
                    floor_sockets,
                    mode=mode,
                    result=result,
                    window_s=settings.window_s,
                    cores=daemon_cores,
                    log=sim_log,
                    beside=(daemon, fleet),
                )
                paired = floors[mode]
                progress(
                    f"  {run.label} guests, {mode} floor beside the daemon: floor CPU "
                    f"{paired.cpu_pct:.1f}% ({paired.polls:.2f} polls/guest/s), daemon CPU "
                    f"{paired.daemon_cpu_pct:.1f}% ({paired.daemon_polls:.2f} polls/guest/s): "
                    f"{paired.ratio or 0.0:.2f}x per poll; the fleets "
                    f"{paired.fleets_cpu_pct[0]:.0f}% and {paired.fleets_cpu_pct[1]:.0f}%, "
                    f"lag p99 {paired.fleets_lag_p99_ms:.0f} ms"
                    + ("" if paired.steady else " (not steady)")
                )
            return dataclasses.replace(result, beside_qmp=floors["qmp"], beside_raw=floors["raw"])
        finally:
            if daemon is not None:
                stop_daemon(daemon)
            fleet.close()
            if floor_fleet is not None:
                floor_fleet.close()


def run_floor(
    fleet: FleetProcess,
    sockets: Path,
    *,
    mode: str,
    result: Result,
    window_s: float,
    cores: set[int] | None,
    log: IO[str],
    beside: tuple[subprocess.Popen[bytes], FleetProcess],
) -> Paired:
    """A floor client (:mod:`benchmarks.scale_floor`) on a fleet of its own, sending the
    daemon's rate of query-balloon and balloon commands, pinned to the daemon's core while
    the daemon keeps running (``beside``: the daemon and its fleet): both processes' CPU
    over one window, so that the machine's speed, which drifts from minute to minute, is
    the same for both."""
    daemon, daemon_fleet = beside
    argv = [sys.executable, "-m", "benchmarks.scale_floor", str(sockets), mode]
    rates = [f"{result.commands_per_s:.3f}", f"{result.queries_per_s:.3f}"]
    client = FleetProcess.__new__(FleetProcess)
    client.proc = subprocess.Popen(
        [*argv, *rates], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=log, text=True,
    )  # fmt: skip
    try:
        if cores:
            os.sched_setaffinity(client.proc.pid, cores)
        ready = client.read(CONNECT_ALL_S)
        if ready.get("ready") != result.run.guests:
            raise RuntimeError(f"the {mode} floor connected to {ready}, not {result.run.guests}")
        time.sleep(FLOOR_WARMUP_S)
        proc, daemon_proc = Proc(client.proc.pid), Proc(daemon.pid)
        client.ask("window")
        daemon_fleet.ask("window")
        fleet.ask("window")
        cpu0, daemon0, t0 = proc.cpu_s(), daemon_proc.cpu_s(), time.monotonic()
        time.sleep(window_s)
        cpu1, daemon1, t1 = proc.cpu_s(), daemon_proc.cpu_s(), time.monotonic()
        if daemon.poll() is not None:
            raise RuntimeError(f"balloond exited with status {daemon.returncode}")
        rss = proc.status_mib("VmRSS")
        report = client.ask("report")
        daemon_report = daemon_fleet.ask("report")
        floor_fleet_report = fleet.ask("report")
        n = result.run.guests
        return Paired(
            cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
            polls=report["polls"] / report["window_s"] / n,
            rss_mib=rss,
            daemon_cpu_pct=100 * (daemon1 - daemon0) / (t1 - t0),
            daemon_polls=daemon_report["stats_reads"] / daemon_report["window_s"] / n,
            fleets_cpu_pct=(daemon_report["cpu_pct"], floor_fleet_report["cpu_pct"]),
            fleets_lag_p99_ms=1000
            * max(daemon_report["lag_p99_s"], floor_fleet_report["lag_p99_s"]),
        )
    finally:
        client.close()


def _test_domains(n: int) -> str:
    """libvirt's test driver: ``n`` running 1 GiB domains with a balloon (a node file)."""
    domain = (
        "<domain type='test'><name>g{i}</name><memory unit='MiB'>1024</memory>"
        "<currentMemory unit='MiB'>1024</currentMemory><os><type>hvm</type></os>"
        "<devices><memballoon model='virtio'/></devices></domain>"
    )
    return "<node>" + "".join(domain.format(i=i) for i in range(n)) + "</node>"


def run_libvirt(run: Run, *, settings: Settings, progress: Progress, logs: Path) -> Result:
    """The libvirt way: a real libvirtd serving libvirt's test driver with ``run.guests``
    domains (no QEMU behind them: their stats never change, so this is the cost of
    polling, as in an idle run), the daemon connected through its socket."""
    import asyncio

    from testkit.lab.libvirt import Libvirtd

    daemon_cores, sim_cores = cpu_plan()
    name = f"scale-{run.guests}-libvirt"
    with workdir() as work, open(logs / f"{name}-daemon.log", "w") as daemon_log:
        libvirtd = Libvirtd(work / "lv")
        daemon: subprocess.Popen[bytes] | None = None
        try:
            asyncio.run(libvirtd.start())
            if sim_cores and libvirtd.pid:
                os.sched_setaffinity(libvirtd.pid, sim_cores)
            node = work / "node.xml"
            node.write_text(_test_domains(run.guests))
            uri = f"test+unix://{node}?socket={libvirtd.dirs['run']}/libvirt-sock"
            port = free_port()
            config = write_config(work, work, port, way="libvirt", uri=uri)
            started = time.monotonic()
            daemon = start_daemon(config, log=daemon_log, cores=daemon_cores)
            while _active(port) < run.guests:
                if daemon.poll() is not None:
                    raise RuntimeError(f"balloond exited with status {daemon.returncode}")
                if time.monotonic() - started > CONNECT_ALL_S:
                    raise RuntimeError(f"not all {run.guests} domains active in {CONNECT_ALL_S:g}s")
                time.sleep(0.5)
            startup_s = time.monotonic() - started
            progress(f"  {run.label} guests: every domain active after {startup_s:.1f}s; settling")
            time.sleep(settings.warmup_s)
            proc, server = Proc(daemon.pid), Proc(libvirtd.pid or 0)
            before, _ = scrape(port)
            cpu0, srv0, t0 = proc.cpu_s(), server.cpu_s(), time.monotonic()
            time.sleep(settings.window_s)
            cpu1, srv1, t1 = proc.cpu_s(), server.cpu_s(), time.monotonic()
            rss_mib = proc.status_mib("VmRSS")
            after, scrape_s = scrape(port)
            polls = (
                after["balloond_guest_decisions_total"] - before["balloond_guest_decisions_total"]
            )
            lag = after.get("balloond_event_loop_lag_seconds")
            timeouts = after.get("balloond_guest_qmp_timeouts_total")
            result = Result(
                run=run,
                startup_s=startup_s,
                cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
                rss_mib=rss_mib,
                hwm_mib=proc.status_mib("VmHWM"),
                p50_ms=None,
                p99_ms=None,
                max_ms=None,
                commands_per_s=0.0,
                polls_per_guest_s=polls / (t1 - t0) / run.guests,
                loop_lag_ms=None if lag is None else 1000 * lag,
                scrape_ms=1000 * scrape_s,
                qmp_timeouts=None if timeouts is None else int(timeouts),
                sim_cpu_pct=100 * (srv1 - srv0) / (t1 - t0),
                sim_lag_p99_ms=None,
            )
            progress(
                f"  {run.label} guests: daemon CPU {result.cpu_pct:.1f}%, RSS "
                f"{result.rss_mib:.0f} MiB, {result.polls_per_guest_s:.2f} polls/guest/s; "
                f"libvirtd CPU {result.sim_cpu_pct:.0f}%"
            )
            return result
        finally:
            if daemon is not None:
                stop_daemon(daemon)
            asyncio.run(libvirtd.stop())


def _active(port: int) -> int:
    """Guests whose link is active, from the daemon's metrics (0 until it serves them)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            text = reply.read().decode()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith('balloond_guests{state="active"}'):
            return int(float(line.rpartition(" ")[2]))
    return 0


def _wait_all_polled(
    fleet: FleetProcess, daemon: subprocess.Popen[bytes], *, n: int, started: float
) -> float:
    while True:
        if daemon.poll() is not None:
            raise RuntimeError(f"balloond exited with status {daemon.returncode}")
        if fleet.ask("status")["polled"] >= n:
            return time.monotonic() - started
        if time.monotonic() - started > CONNECT_ALL_S:
            raise RuntimeError(f"balloond did not poll all {n} guests in {CONNECT_ALL_S:g}s")
        time.sleep(0.5)


def _measure(
    run: Run,
    *,
    window_s: float,
    fleet: FleetProcess,
    daemon: subprocess.Popen[bytes],
    port: int,
    startup_s: float,
    progress: Progress,
) -> Result:
    proc = Proc(daemon.pid)
    fleet.ask("window")
    cpu0, t0 = proc.cpu_s(), time.monotonic()
    end = t0 + window_s
    while time.monotonic() < end:
        if daemon.poll() is not None:
            raise RuntimeError(f"balloond exited with status {daemon.returncode}")
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    cpu1, t1 = proc.cpu_s(), time.monotonic()
    rss_mib = proc.status_mib("VmRSS")
    report = fleet.ask("report")
    # One scrape, after the window: a scrape holds the daemon's loop while it formats every
    # guest's series, which would show in the latencies (its time is reported instead).
    metrics, scrape_s = scrape(port)
    latencies = sorted(report["latencies_s"])
    lag = metrics.get("balloond_event_loop_lag_seconds")
    timeouts = metrics.get("balloond_guest_qmp_timeouts_total")
    result = Result(
        run=run,
        startup_s=startup_s,
        cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),
        rss_mib=rss_mib,
        hwm_mib=proc.status_mib("VmHWM"),
        p50_ms=1000 * _quantile(latencies, 0.50),
        p99_ms=1000 * _quantile(latencies, 0.99),
        max_ms=1000 * (latencies[-1] if latencies else 0.0),
        commands_per_s=len(latencies) / report["window_s"],
        queries_per_s=report.get("queries", 0) / report["window_s"],
        polls_per_guest_s=report["stats_reads"] / report["window_s"] / run.guests,
        loop_lag_ms=None if lag is None else 1000 * lag,
        scrape_ms=1000 * scrape_s,
        scrape_loop_ms=_scrape_loop_ms(port),
        qmp_timeouts=None if timeouts is None else int(timeouts),
        sim_cpu_pct=report["cpu_pct"],
        sim_lag_p99_ms=1000 * report["lag_p99_s"],
    )
    progress(
        f"  {run.label} guests: daemon CPU {result.cpu_pct:.1f}%, RSS {result.rss_mib:.0f} MiB "
        f"(peak {result.hwm_mib:.0f}), stats->command p50 {result.p50_ms:.1f} ms "
        f"p99 {result.p99_ms:.1f} ms, {result.commands_per_s:.0f} commands/s, "
        f"{result.polls_per_guest_s:.2f} polls/guest/s; simulator CPU {result.sim_cpu_pct:.0f}%"
    )
    return result


def _scrape_loop_ms(port: int) -> float | None:
    """How long the previous scrape held the daemon's loop (its own gauge, read now)."""
    metrics, _ = scrape(port)
    held = metrics.get("balloond_scrape_loop_seconds")
    return None if held is None else 1000 * held


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- report ----------------------------------------------------------------------------


def table(results: Sequence[Result]) -> str:
    def opt(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    head = (
        "| guests | daemon CPU, % of a core | guests per core | RSS MiB (peak)"
        " | stats→command ms p50 / p99 / max | commands/s | polls/guest/s | loop lag ms"
        " | /metrics scrape ms | QMP timeouts"
        " | other side CPU % / lag p99 ms | all polled after s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = "".join(
        f"| {r.run.label} | {r.cpu_pct:.1f} | {r.run.guests * 100 / max(r.cpu_pct, 0.1):,.0f} "
        f"| {r.rss_mib:.0f} ({r.hwm_mib:.0f}) "
        f"| {opt(r.p50_ms, '.1f')} / {opt(r.p99_ms, '.1f')} / {opt(r.max_ms, '.0f')} "
        f"| {r.commands_per_s:.0f} "
        f"| {r.polls_per_guest_s:.2f} | {opt(r.loop_lag_ms, '.0f')} | {r.scrape_ms:.0f} "
        f"| {opt(r.qmp_timeouts, 'd')} | {r.sim_cpu_pct:.0f} / {opt(r.sim_lag_p99_ms, '.0f')} "
        f"| {r.startup_s:.1f} |\n"
        for r in results
    )
    return head + rows


def floor_table(results: Sequence[Result]) -> str:
    """The daemon against the floor clients on the same fleet, in the same run."""
    rows = [
        (r, r.beside_qmp, r.beside_raw)
        for r in results
        if r.beside_qmp is not None and r.beside_raw is not None
    ]
    if not rows:
        return ""

    def opt(value: float | None, fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    head = (
        "| guests | qemu.qmp floor, % of a core | daemon beside it, % | daemon / floor"
        " | raw streams, % | daemon beside it, % | daemon / raw | daemon alone, %"
        " | polls/guest/s raw / floor / daemon | daemon stats→command p50 / p99 ms"
        " | loop lag ms | scrape held the loop ms | RSS MiB daemon (qemu.qmp floor) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r.run.label} | {q.cpu_pct:.1f} | {q.daemon_cpu_pct:.1f} | {opt(q.ratio, '.2f')} "
        f"| {raw.cpu_pct:.1f} | {raw.daemon_cpu_pct:.1f} | {opt(raw.ratio, '.2f')} "
        f"| {r.cpu_pct:.1f} "
        f"| {raw.polls:.2f} / {q.polls:.2f} / {q.daemon_polls:.2f} "
        f"| {opt(r.p50_ms, '.1f')} / {opt(r.p99_ms, '.1f')} "
        f"| {opt(r.loop_lag_ms, '.0f')} | {opt(r.scrape_loop_ms, '.1f')} "
        f"| {r.rss_mib:.0f} ({q.rss_mib:.0f}) |\n"
        for r, q, raw in rows
    )
    return head + body


def verdict(results: Sequence[Result], *, quick: bool) -> list[str]:
    """One line per target: met or missed, with the number."""

    def line(
        what: str, value: float | None, limit: float, unit: str, *, at_least: bool = False
    ) -> str:
        if value is None:
            return f"- {what}: not measured"
        ok = value >= limit if at_least else value <= limit
        sign = "≥" if at_least else "≤"
        verdict = "met" if ok else "**missed**"
        return f"- {what}: {value:.2f} {unit} (target {sign} {limit:g} {unit}): {verdict}"

    lines = []
    for r in results:
        paired = r.beside_qmp
        if paired is None or r.run.guests not in (1_000, TARGET_GUESTS):
            continue
        what = f"daemon CPU / qemu.qmp floor, {r.run.label} guests"
        if paired.steady:
            lines.append(line(what, r.ratio, TARGET_RATIO, "x"))
            continue
        a, b = paired.fleets_cpu_pct
        lines.append(
            f"- {what}: {r.ratio or 0.0:.2f} x per poll (target ≤ {TARGET_RATIO:g} x): "
            f"**not shown**: the window was not steady (polls/guest/s: the daemon "
            f"{paired.daemon_polls:.2f}, the floor {paired.polls:.2f}, below "
            f"{STEADY_POLLS:g}; the simulated fleets at {a:.0f}% and {b:.0f}% of a core, "
            f"loop lag p99 {paired.fleets_lag_p99_ms:.0f} ms), so the two did not make the "
            "same traffic"
        )
    at = [r for r in results if r.run.guests == TARGET_GUESTS and r.run.way == "qmp"]
    if not at:
        return [*lines, f"- The other targets are for {TARGET_GUESTS:,} guests; none ran."]
    for r in at:
        where = f"{r.run.label} guests"
        rss = line(f"daemon RSS, {where}", r.rss_mib, TARGET_RSS_MIB, "MiB")
        lines += [
            line(f"polls per guest per second, {where}", r.polls_per_guest_s, 0.995, "",
                 at_least=True),
            line(f"p99 stats→command latency, {where}", r.p99_ms, TARGET_P99_MS, "ms"),
            line(f"event-loop lag, {where}", r.loop_lag_ms, TARGET_LAG_MS, "ms"),
            line(f"a /metrics scrape holding the loop, {where}", r.scrape_loop_ms,
                 TARGET_SCRAPE_MS, "ms"),
            rss + (" (quick mode: history not full yet, see a full run)" if quick else ""),
        ]  # fmt: skip
    return lines


def speed_reference_s() -> float:
    """This machine's speed now: the best of three runs of a fixed pure-Python loop
    (10 million additions), to read the other numbers against."""

    def loop() -> float:
        started = time.perf_counter()
        total = 0
        for i in range(10_000_000):
            total += i
        return time.perf_counter() - started

    return min(loop() for _ in range(3))


def chart(results: Sequence[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    own = [r for r in results if r.run.way == "qmp"]
    busy = [r for r in own if r.run.workload == "breathing"]
    idle = [r for r in own if r.run.workload == "idle"]
    xs = [r.run.guests for r in busy]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.9), dpi=80, layout="constrained")
    cpu, mem, lat = axes
    cpu.plot(xs, [r.cpu_pct for r in busy], "o-", label="daemon")
    cpu.plot(xs, [r.sim_cpu_pct for r in busy], "s--", color="grey", label="simulator")
    if idle:
        cpu.plot([r.run.guests for r in idle], [r.cpu_pct for r in idle], "x", ms=8,
                 color="tab:green", label="daemon, idle guests")  # fmt: skip
    floored = [(r.run.guests, r.beside_qmp.cpu_pct) for r in busy if r.beside_qmp is not None]
    if floored:
        cpu.plot([n for n, _ in floored], [pct for _, pct in floored],
                 "v:", color="tab:purple", label="qemu.qmp floor")  # fmt: skip
    cpu.set(title="CPU, % of one core", xlabel="guests")
    mem.plot(xs, [r.rss_mib for r in busy], "o-", label="RSS")
    mem.plot(xs, [r.hwm_mib for r in busy], "^--", label="peak (VmHWM)")
    mem.axhline(TARGET_RSS_MIB, color="red", lw=0.8, ls=":", label="target")
    mem.set(title="daemon memory, MiB", xlabel="guests")
    lat.plot(xs, [r.p50_ms or 0.0 for r in busy], "o-", label="p50")
    lat.plot(xs, [r.p99_ms or 0.0 for r in busy], "^-", label="p99")
    lat.axhline(TARGET_P99_MS, color="red", lw=0.8, ls=":", label="p99 target")
    lat.set(title="stats→command latency, ms", xlabel="guests")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path)
    plt.close(fig)


def main(
    quick: bool,
    out_dir: Path,
    progress: Progress = print,
    guests: Sequence[int] = (),
    way: str = "qmp",
) -> str:
    """Run every fleet (or just ``guests``, reached ``way``); write ``scale.png``; return
    the Markdown."""
    settings = QUICK if quick else FULL
    if guests:
        workload = "idle" if way == "libvirt" else "breathing"
        runs = tuple(Run(n, workload, way, floor=way == "qmp") for n in guests)
        settings = Settings(runs, settings.warmup_s, settings.window_s)
    logs = Path(tempfile.mkdtemp(prefix="balloond-scale-logs-"))
    reference_s = speed_reference_s()
    progress(f"scale: speed reference {reference_s:.2f}s (10 million additions in Python)")
    daemon_cores, sim_cores = cpu_plan()
    my_cores = os.sched_getaffinity(0)
    results = []
    try:
        if sim_cores:
            os.sched_setaffinity(0, sim_cores)  # this process stays off the daemon's core
        for run in settings.runs:
            progress(
                f"scale: {run.label} guests (settle {settings.warmup_s:g}s, "
                f"measure {settings.window_s:g}s)"
            )
            results.append(run_one(run, settings=settings, progress=progress, logs=logs))
    finally:
        os.sched_setaffinity(0, my_cores)
    out_dir.mkdir(parents=True, exist_ok=True)
    chart(results, out_dir / "scale.png")
    progress(f"scale: chart in {out_dir / 'scale.png'}, daemon and simulator logs in {logs}")
    pinning = (
        f"the daemon pinned to core {min(daemon_cores)}, the simulator to the other"
        f"{'s' if sim_cores and len(sim_cores) > 1 else ''}"
        if daemon_cores
        else "one core only: nothing pinned, the simulator shares the daemon's core"
    )
    return "\n".join(
        [
            "## Scale",
            "",
            f"`balloond run` (uvloop; default policy; poll interval {POLL_INTERVAL_S:g} s; "
            "metrics, control socket and audit log on; INFO log to a file) against simulated "
            f"QEMU 7.2 guests of 1 GiB served from another process; {pinning}. Each guest's "
            "anonymous memory breathes between 15 % and 55 % of its RAM over two minutes, each "
            "guest at its own phase, so balloons move all the time; the `idle` run's guests "
            "sit still, which is the cost of polling alone. After every guest had been polled "
            f"once, {settings.warmup_s:g} s to settle"
            + (" (more than the daemon's 60 s of history per guest)" if not quick else "")
            + f", then a window of {settings.window_s:g} s."
            + (" Quick mode: memory was still growing." if quick else ""),
            "",
            f"Speed reference measured at the start of this run: {reference_s:.2f} s for 10 "
            "million additions in a Python loop (best of three; LAB.md saw 1.3 s on one of "
            "these machines). These machines vary 2-3x from hour to hour, and by 10-20% from "
            "one minute to the next, so the daemon is measured against a floor beside it: "
            "in each run marked below, after the daemon's own window, two clients run in "
            "turn on a second simulated fleet of the same size, pinned to the daemon's core "
            "while the daemon keeps running, each sending the traffic the daemon sent (a "
            "`guest-stats` read per guest per second, and the daemon's measured rates of "
            "`query-balloon` and `balloon`): a bare qemu.qmp `QMPClient` trimmed as the "
            "daemon trims it (the daemon's own `LeanClient`: no event history, no "
            "pretty-printed debug copies, each request encoded once), the floor "
            "for anything built on qemu.qmp, and raw asyncio streams writing and reading "
            "JSON lines, about the least Python can spend on it (`benchmarks/scale_floor.py`). "
            f"The daemon's CPU and the floor's are read over the same {settings.window_s:g} s "
            "window, so a minute in which the machine runs slow counts against both.",
            "",
            floor_table(results),
            "- **daemon / floor**: the daemon's CPU per poll as a multiple of the qemu.qmp "
            "floor's, both over the same window (per poll, so that a side that fell a little "
            "behind is judged for the same traffic; a window in which either side made fewer "
            f"than {STEADY_POLLS:g} polls per guest per second shows no ratio target as met): "
            "what the daemon costs on top of the QMP traffic it "
            "has to make (decisions, books, timeouts, audit records and log lines, its other "
            "tasks). **daemon alone**: its CPU over its own window, before the floors ran "
            "(the latencies, lag and RSS are from that window too). **polls/guest/s** of the "
            "daemon: over the qemu.qmp floor's window. **scrape held "
            "the loop**: the longest stretch a `/metrics` scrape kept the daemon's event loop "
            "busy (its own `balloond_scrape_loop_seconds`; a scrape writes a hundred guests, "
            "or one family of series, per turn of the loop).",
            "",
            "Every run, each way of reaching guests:",
            "",
            table(results),
            "- **daemon CPU**: utime + stime of the daemon process over the window. **RSS**: "
            "VmRSS at the end of the window; **peak**: VmHWM since start, connecting to every "
            "guest included.",
            "- **stats→command**: per `balloon` command, from the simulator's answer to the "
            "guest-stats read of the same cycle to the command's arrival at the simulator: "
            "the decision, the audit record, the log line, a query-balloon when the balloon "
            "was moving, and any wait in either event loop.",
            "- **loop lag**: the daemon's `balloond_event_loop_lag_seconds` (its worst "
            "wake-up delay over the last 10 s), scraped once, after the window; the next "
            "column is how long that scrape took from the client's side (the daemon's loop "
            "turns between its steps).",
            "- **polls/guest/s**: guest-stats reads per guest per second (1.00: every guest "
            "read once a second, as configured). **other side**: the simulator's own CPU "
            "and loop lag (a simulator that keeps up answers within a few ms), or libvirtd's "
            "CPU. **guests per core**: guests divided by the daemon's share of a core, the "
            "number one core would manage at this cost per guest.",
            "- **How the guests are reached** (`balloonctl status`'s VIA): runs without a "
            "mark use QMP on sockets of balloond's own (held open; QEMU's events say when "
            "`actual` moved). **qmp-shared**: the same simulated guests found by "
            "`shared_globs`: balloond connects for each cycle (QMP greeting and "
            "capabilities negotiation) and disconnects after, so the socket is free for "
            "other clients, and reads `actual` every cycle (no events between sessions). "
            "**libvirt**: a real libvirtd serving libvirt's test driver with that many "
            "1 GiB domains (no QEMU behind them: their stats never change, so nothing "
            "moves, as in an idle run, and nothing times stats to command); every call "
            "goes through libvirt's RPC from balloond's bounded thread pool.",
            "",
            f"Targets (the ratio at 1,000 and {TARGET_GUESTS:,} guests, the rest at "
            f"{TARGET_GUESTS:,}; {POLL_INTERVAL_S:g} s interval):",
            "",
            *verdict(results, quick=quick),
            "",
            "![scale](scale.png)",
            "",
        ]
    )


def _cli(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short windows")
    ap.add_argument("--guests", type=int, nargs="+", default=(), help="fleet sizes to run")
    ap.add_argument("--way", choices=WAYS, default="qmp", help="how --guests are reached")
    ap.add_argument("--out", type=Path, default=None, help="where scale.png goes (a temp dir)")
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="balloond-scale-"))
    print(main(args.quick, out, guests=args.guests, way=args.way))
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
