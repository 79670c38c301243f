"""Prometheus metrics: what each guest's balloon does and how the daemon itself is doing.

Nothing is counted on the hot path: a scrape reads the daemon's state (controllers, links,
decision counters) when Prometheus asks. The endpoint is a tiny asyncio HTTP server
answering ``GET /metrics``: it copies what it reports on the event loop, a few hundred
guests per turn of the loop (:func:`take_snapshot_async`), and writes the text in a worker
thread (:func:`render`), so that a scrape of thousands of guests never holds the loop for
more than a few milliseconds at once; ``balloond_scrape_loop_seconds`` says how long.
(prometheus_client's own server runs in a thread, which would read the daemon's dicts while
the loop changes them.) It listens on loopback by default: put a proxy or an SSH tunnel in
front of it rather than open it to the network.

Sizes are bytes and times seconds, as Prometheus conventions want; dashboards convert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from balloond.adapters.port import DaemonPort, GuestReading
from balloond.core.link import LinkState
from balloond.runtime.config import parse_host_port

log = logging.getLogger("balloond.adapters.metrics")

DEFAULT_ADDRESS = "127.0.0.1:9847"
#: Guests read per turn of the event loop while a scrape takes its snapshot.
SNAPSHOT_CHUNK = 250
#: How often the loop-lag ticker wakes, and over how many ticks the worst lag is kept.
LAG_TICK_S = 0.5
LAG_WINDOW = 20
#: Limits for one HTTP request: header bytes and the time a client may take to send them.
MAX_HEADER_BYTES = 8192
REQUEST_TIMEOUT_S = 10.0


class LoopLag:
    """Measures how late the event loop wakes a sleeper: the daemon's own responsiveness."""

    def __init__(self, *, tick_s: float = LAG_TICK_S, window: int = LAG_WINDOW) -> None:
        self.tick_s = tick_s
        self.samples: deque[float] = deque(maxlen=window)

    @property
    def worst_s(self) -> float:
        """The largest lag seen over the last window of ticks (0 before the first)."""
        return max(self.samples, default=0.0)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_s):
                    await stop.wait()
            if not stop.is_set():
                self.samples.append(max(0.0, loop.time() - before - self.tick_s))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a scrape reports, copied out of the daemon on the event loop, so that the
    text can be written elsewhere (a worker thread) while the daemon moves on."""

    guests: list[tuple[str, GuestReading]]
    cycles: int
    reload_failures: int
    reload_error: bool
    #: (task, failures, restarting) per task that failed.
    failures: list[tuple[str, int, bool]]
    host: tuple[int, int] | None
    lag_s: float | None
    lag_window: int
    #: How long the previous scrape held the event loop (None before the first).
    scrape_loop_s: float | None
    now_wall: float


def _head(d: DaemonPort, lag: LoopLag | None, guests: list[tuple[str, GuestReading]],
          scrape_loop_s: float | None) -> Snapshot:  # fmt: skip
    host = d.host
    return Snapshot(
        guests=guests,
        cycles=d.cycles,
        reload_failures=d.reload_failures,
        reload_error=bool(d.reload_error),
        failures=[(f.task, f.failures, f.restarting) for f in d.task_failures()],
        host=None if host is None else (host.total_bytes, host.available_bytes),
        lag_s=None if lag is None else lag.worst_s,
        lag_window=0 if lag is None else (lag.samples.maxlen or 0),
        scrape_loop_s=scrape_loop_s,
        now_wall=time.time(),
    )


def take_snapshot(
    d: DaemonPort, lag: LoopLag | None = None, scrape_loop_s: float | None = None
) -> Snapshot:
    """The snapshot in one go (for a few guests, and for tests)."""
    guests = [(name, guest.reading()) for name, guest in sorted(d.guests.items())]
    return _head(d, lag, guests, scrape_loop_s)


async def take_snapshot_async(
    d: DaemonPort,
    lag: LoopLag | None = None,
    scrape_loop_s: float | None = None,
    *,
    chunk: int = SNAPSHOT_CHUNK,
) -> tuple[Snapshot, float]:
    """The snapshot, read ``chunk`` guests at a time with a turn of the loop in between,
    so that no guest's poll waits for the whole fleet to be read; also the longest the
    loop was held at once (seconds)."""
    clock = time.perf_counter
    started = clock()
    names = sorted(d.guests)
    guests: list[tuple[str, GuestReading]] = []
    held = clock() - started
    for at in range(0, len(names), chunk):
        await asyncio.sleep(0)
        started = clock()
        live = d.guests
        for name in names[at : at + chunk]:
            guest = live.get(name)
            if guest is not None:  # it may have gone while we looked at others
                guests.append((name, guest.reading()))
        held = max(held, clock() - started)
    started = clock()
    snap = _head(d, lag, guests, scrape_loop_s)
    return snap, max(held, clock() - started)


def families(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of a snapshot: pure, so it can run in any thread."""
    g = ["guest"]
    actual = GaugeMetricFamily(
        "balloond_guest_actual_bytes", "Guest memory size now (QMP actual)", labels=g
    )
    target = GaugeMetricFamily(
        "balloond_guest_target_bytes", "Balloon target balloond last set", labels=g
    )
    available = GaugeMetricFamily(
        "balloond_guest_available_bytes", "Memory available inside the guest", labels=g
    )
    boot = GaugeMetricFamily("balloond_guest_boot_bytes", "Guest memory at boot", labels=g)
    age = GaugeMetricFamily(
        "balloond_guest_stats_age_seconds",
        "Time since the guest last reported balloon stats",
        labels=g,
    )
    features = GaugeMetricFamily(
        "balloond_guest_balloon_feature",
        "1 if the balloon device has the feature on, 0 if off (absent: unknown)",
        labels=["guest", "feature"],
    )
    info = GaugeMetricFamily(
        "balloond_guest_info",
        "Always 1: the guest's link state, automation mode and policy as labels",
        labels=["guest", "state", "mode", "policy"],
    )
    decisions = CounterMetricFamily(
        "balloond_guest_decisions",
        "Policy decisions by reason since the daemon started",
        labels=["guest", "reason"],
    )
    errors = CounterMetricFamily(
        "balloond_guest_qmp_errors", "QMP calls that failed, timeouts included", labels=g
    )
    timeouts = CounterMetricFamily(
        "balloond_guest_qmp_timeouts", "QMP calls that got no answer in time", labels=g
    )
    pressure = GaugeMetricFamily(
        "balloond_guest_under_pressure",
        "1 while the last decision said the guest needed memory (pressure, oom-risk, ...)",
        labels=g,
    )
    oom = CounterMetricFamily(
        "balloond_guest_oom_kills",
        "Processes the guest's OOM killer ended since it booted (QEMU >= 9.2 reports it)",
        labels=g,
    )
    floor = GaugeMetricFamily(
        "balloond_guest_floor_bytes",
        "The smallest size balloond would give the guest now (its last decision's floor)",
        labels=g,
    )
    working_set = GaugeMetricFamily(
        "balloond_guest_working_set_bytes",
        "Available memory the guest's refaults showed it needs, in its floor now",
        labels=g,
    )
    reserve = GaugeMetricFamily(
        "balloond_guest_surge_reserve_bytes",
        "Room kept above the floor for the guest's own worst recent surge",
        labels=g,
    )
    by_state = dict.fromkeys((s.value for s in LinkState), 0)
    reclaimed = under_pressure = 0
    now_wall = snap.now_wall
    for name, r in snap.guests:
        by_state[r.state.value] = by_state.get(r.state.value, 0) + 1
        info.add_metric([name, r.state.value, r.mode, r.policy or ""], 1)
        if r.boot_bytes is not None:
            boot.add_metric([name], r.boot_bytes)
            if r.actual_bytes is not None:
                reclaimed += max(0, r.boot_bytes - r.actual_bytes)
        for feature, on in (
            ("deflate-on-oom", r.deflate_on_oom),
            ("free-page-reporting", r.free_page_reporting),
        ):
            if on is not None:
                features.add_metric([name, feature], 1 if on else 0)
        if r.target_bytes is not None:
            target.add_metric([name], r.target_bytes)
        if r.actual_bytes is not None:
            actual.add_metric([name], r.actual_bytes)
        if r.available_bytes is not None:
            available.add_metric([name], r.available_bytes)
        if r.stats_time is not None:
            age.add_metric([name], max(0.0, now_wall - r.stats_time))
        for reason, count in sorted(r.decisions.items()):
            decisions.add_metric([name, reason], count)
        errors.add_metric([name], r.errors_total)
        timeouts.add_metric([name], r.timeouts_total)
        pressure.add_metric([name], 1 if r.under_pressure else 0)
        under_pressure += 1 if r.under_pressure else 0
        if r.oom_kills is not None:
            oom.add_metric([name], r.oom_kills)
        if r.floor_bytes is not None:
            floor.add_metric([name], r.floor_bytes)
        working_set.add_metric([name], r.working_set_bytes or 0)
        reserve.add_metric([name], r.surge_reserve_bytes or 0)
    yield from (actual, target, available, boot, age, info, features)
    yield from (decisions, errors, timeouts, pressure, oom, floor, working_set, reserve)

    guests = GaugeMetricFamily("balloond_guests", "Managed guests by link state", labels=["state"])
    for state, count in by_state.items():
        guests.add_metric([state], count)
    yield guests
    yield GaugeMetricFamily(
        "balloond_reclaimed_bytes",
        "Memory given back to the host: boot size minus actual, summed over guests",
        value=reclaimed,
    )
    yield GaugeMetricFamily(
        "balloond_guests_under_pressure",
        "Guests whose last decision was to give memory back because they needed it",
        value=under_pressure,
    )
    yield CounterMetricFamily(
        "balloond_control_cycles", "Host planner cycles run", value=snap.cycles
    )
    yield CounterMetricFamily(
        "balloond_reload_failures", "Config reloads refused as invalid", value=snap.reload_failures
    )
    yield GaugeMetricFamily(
        "balloond_reload_error",
        "1 while the last reload was refused (the old config still runs)",
        value=1 if snap.reload_error else 0,
    )
    failures = CounterMetricFamily(
        "balloond_task_failures",
        "Unexpected ends of supervised tasks (each was logged and restarted)",
        labels=["task"],
    )
    restarting = GaugeMetricFamily(
        "balloond_task_restarting",
        "1 while a failed task waits out its backoff before it is started again",
        labels=["task"],
    )
    for task, count, again in snap.failures:
        failures.add_metric([task], count)
        restarting.add_metric([task], 1 if again else 0)
    yield failures
    yield restarting
    if snap.host is not None:
        yield GaugeMetricFamily(
            "balloond_host_total_bytes", "Host memory (MemTotal)", value=snap.host[0]
        )
        yield GaugeMetricFamily(
            "balloond_host_available_bytes",
            "Host memory available (MemAvailable)",
            value=snap.host[1],
        )
    if snap.lag_s is not None:
        yield GaugeMetricFamily(
            "balloond_event_loop_lag_seconds",
            f"Worst event-loop wake-up delay over the last {snap.lag_window} ticks",
            value=snap.lag_s,
        )
    if snap.scrape_loop_s is not None:
        yield GaugeMetricFamily(
            "balloond_scrape_loop_seconds",
            "How long the previous scrape held the event loop at once (the text is written "
            "in a worker thread)",
            value=snap.scrape_loop_s,
        )


class DaemonCollector:
    """A prometheus_client collector reading the daemon (a :class:`DaemonPort`) when
    collected: for tests and tools; the endpoint snapshots in steps instead."""

    def __init__(self, daemon: DaemonPort, lag: LoopLag | None = None) -> None:
        self.daemon = daemon
        self.lag = lag

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with the guests; nothing to pre-register

    def collect(self) -> Iterable[Metric]:
        return families(take_snapshot(self.daemon, self.lag))


class _SnapshotCollector:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return families(self.snap)


def render(snap: Snapshot) -> bytes:
    """The exposition text of a snapshot, with the process's own metrics (in a thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snap))
    ProcessCollector(registry=registry)
    return generate_latest(registry)


def make_registry(daemon: DaemonPort, lag: LoopLag | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon, lag))
    ProcessCollector(registry=registry)
    return registry


class MetricsAdapter:
    """Serves ``GET /metrics`` at ``address`` until ``stop`` is set."""

    name = "metrics"

    def __init__(self, daemon: DaemonPort, *, address: str = DEFAULT_ADDRESS) -> None:
        self.host, self.port = parse_host_port(address)
        self.daemon = daemon
        self.lag = LoopLag()
        self._clients: set[asyncio.Task[Any]] = set()
        #: Writes the text of each scrape off the event loop (one at a time).
        self._render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="balloond-metrics")
        #: How long the last scrape held the event loop at once (seconds).
        self.scrape_loop_s: float | None = None
        #: The bound (host, port), once listening (port 0 asks the kernel for one).
        self.bound: tuple[str, int] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        try:
            server = await asyncio.start_server(
                self._client, self.host, self.port, reuse_address=True, limit=MAX_HEADER_BYTES
            )
        except OSError as exc:
            raise OSError(exc.errno, f"metrics: cannot listen on {self.host}:{self.port}") from exc
        self.bound = server.sockets[0].getsockname()[:2]
        log.info("metrics on http://%s:%d/metrics", *_url_host(self.bound))
        ticker = asyncio.create_task(self.lag.run(stop), name="metrics:loop-lag")
        try:
            await stop.wait()
        finally:
            server.close()
            ticker.cancel()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(ticker, *self._clients, return_exceptions=True)
            await server.wait_closed()
            self._render.shutdown(wait=False, cancel_futures=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        task.set_name("metrics:scrape")
        self._clients.add(task)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                status, ctype, body, head_only = await self._respond(reader)
                header = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                ).encode()
                writer.write(header if head_only else header + body)
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass  # a scraper that went away or stalled; nothing to answer
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                # The peer may already be gone; the connection is over either way.
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, str, bytes, bool]:
        text = "text/plain; charset=utf-8"
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return "431 Request Header Fields Too Large", text, b"headers too large\n", False
        except asyncio.IncompleteReadError:
            return "400 Bad Request", text, b"incomplete request\n", False
        if len(head) > MAX_HEADER_BYTES:
            return "431 Request Header Fields Too Large", text, b"headers too large\n", False
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return "400 Bad Request", text, b"bad request line\n", False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", text, b"GET only\n", False
        head_only = method == b"HEAD"
        if target == b"/metrics":
            snap, held = await take_snapshot_async(self.daemon, self.lag, self.scrape_loop_s)
            self.scrape_loop_s = held
            body = await asyncio.get_running_loop().run_in_executor(self._render, render, snap)
            return "200 OK", CONTENT_TYPE_PLAIN_0_0_4, body, head_only
        if target == b"/":
            return "200 OK", text, b"balloond: metrics at /metrics\n", head_only
        return "404 Not Found", text, b"not found; try /metrics\n", head_only


def _url_host(bound: tuple[str, int]) -> tuple[str, int]:
    host, port = bound
    return (f"[{host}]" if ":" in host else host), port
