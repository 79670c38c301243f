"""Prometheus metrics: what each guest's balloon does and how the daemon itself is doing.

Nothing is counted on the hot path: a scrape reads the daemon's state (controllers, links,
decision counters) when Prometheus asks. The endpoint is a tiny asyncio HTTP server
answering ``GET /metrics`` on the event loop: it writes the per-guest series as text
directly, a few hundred guests per turn of the loop (:func:`scrape`), so that a scrape of
thousands of guests never holds the loop for more than a few milliseconds at once
(``balloond_scrape_loop_seconds`` says how long). (Writing the text in a worker thread
instead made things worse: the thread's bytecode and the loop's many short system calls
fight over the GIL, and each of the loop's calls waits out the switch interval.)
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
SNAPSHOT_CHUNK = 100
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


#: The per-guest families, in the order a scrape lists them: (name as exposed, type, help).
#: Counters carry ``_total`` in their exposed name, as prometheus_client writes them.
_GUEST_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("balloond_guest_actual_bytes", "gauge", "Guest memory size now (QMP actual)"),
    ("balloond_guest_target_bytes", "gauge", "Balloon target balloond last set"),
    ("balloond_guest_available_bytes", "gauge", "Memory available inside the guest"),
    ("balloond_guest_boot_bytes", "gauge", "Guest memory at boot"),
    (
        "balloond_guest_stats_age_seconds",
        "gauge",
        "Time since the guest last reported balloon stats",
    ),
    ("balloond_guest_info", "gauge",
     "Always 1: the guest's link state, automation mode and policy as labels"),
    ("balloond_guest_balloon_feature", "gauge",
     "1 if the balloon device has the feature on, 0 if off (absent: unknown)"),
    ("balloond_guest_decisions_total", "counter",
     "Policy decisions by reason since the daemon started"),
    ("balloond_guest_qmp_errors_total", "counter", "QMP calls that failed, timeouts included"),
    ("balloond_guest_qmp_timeouts_total", "counter", "QMP calls that got no answer in time"),
    ("balloond_guest_under_pressure", "gauge",
     "1 while the last decision said the guest needed memory (pressure, oom-risk, ...)"),
    ("balloond_guest_oom_kills_total", "counter",
     "Processes the guest's OOM killer ended since it booted (QEMU >= 9.2 reports it)"),
    ("balloond_guest_floor_bytes", "gauge",
     "The smallest size balloond would give the guest now (its last decision's floor)"),
    ("balloond_guest_working_set_bytes", "gauge",
     "Available memory the guest's refaults showed it needs, in its floor now"),
    ("balloond_guest_surge_reserve_bytes", "gauge",
     "Room kept above the floor for the guest's own worst recent surge"),
)  # fmt: skip
(ACTUAL, TARGET, AVAILABLE, BOOT, AGE, INFO, FEATURE, DECISIONS, ERRORS, TIMEOUTS, PRESSURE,
 OOM, FLOOR, WORKING_SET, RESERVE) = range(len(_GUEST_FAMILIES))  # fmt: skip


def _fmt(value: float) -> str:
    """A sample value (Python's float notation, which Prometheus reads)."""
    return repr(float(value))


def _label(value: str) -> str:
    """A label value as the text format wants it (backslash, quote and newline escaped)."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


class GuestLines:
    """The per-guest part of a scrape, written as text directly, guest by guest, so a
    scrape can do a few hundred guests per turn of the event loop (prometheus_client's
    generic objects cost several times more per sample). Also the daemon-wide sums the
    guests give (by link state, reclaimed, under pressure)."""

    def __init__(self, now_wall: float) -> None:
        self.now_wall = now_wall
        self.lines: list[list[str]] = [[] for _ in _GUEST_FAMILIES]
        self.by_state = dict.fromkeys((s.value for s in LinkState), 0)
        self.reclaimed = 0
        self.under_pressure = 0

    def add(self, name: str, r: GuestReading) -> None:
        lines, fmt = self.lines, _fmt
        g = f'guest="{_label(name)}"'
        self.by_state[r.state.value] = self.by_state.get(r.state.value, 0) + 1
        lines[INFO].append(
            f'balloond_guest_info{{{g},mode="{_label(r.mode)}",policy="{_label(r.policy or "")}"'
            f',state="{r.state.value}"}} 1.0'
        )
        if r.boot_bytes is not None:
            lines[BOOT].append(f"balloond_guest_boot_bytes{{{g}}} {fmt(r.boot_bytes)}")
            if r.actual_bytes is not None:
                self.reclaimed += max(0, r.boot_bytes - r.actual_bytes)
        for feature, on in (
            ("deflate-on-oom", r.deflate_on_oom),
            ("free-page-reporting", r.free_page_reporting),
        ):
            if on is not None:
                lines[FEATURE].append(
                    f'balloond_guest_balloon_feature{{feature="{feature}",{g}}} '
                    f"{'1.0' if on else '0.0'}"
                )
        if r.target_bytes is not None:
            lines[TARGET].append(f"balloond_guest_target_bytes{{{g}}} {fmt(r.target_bytes)}")
        if r.actual_bytes is not None:
            lines[ACTUAL].append(f"balloond_guest_actual_bytes{{{g}}} {fmt(r.actual_bytes)}")
        if r.available_bytes is not None:
            lines[AVAILABLE].append(
                f"balloond_guest_available_bytes{{{g}}} {fmt(r.available_bytes)}"
            )
        if r.stats_time is not None:
            age = max(0.0, self.now_wall - r.stats_time)
            lines[AGE].append(f"balloond_guest_stats_age_seconds{{{g}}} {fmt(age)}")
        for reason, count in sorted(r.decisions.items()):
            lines[DECISIONS].append(
                f'balloond_guest_decisions_total{{{g},reason="{_label(reason)}"}} {fmt(count)}'
            )
        lines[ERRORS].append(f"balloond_guest_qmp_errors_total{{{g}}} {fmt(r.errors_total)}")
        lines[TIMEOUTS].append(f"balloond_guest_qmp_timeouts_total{{{g}}} {fmt(r.timeouts_total)}")
        lines[PRESSURE].append(
            f"balloond_guest_under_pressure{{{g}}} {'1.0' if r.under_pressure else '0.0'}"
        )
        self.under_pressure += 1 if r.under_pressure else 0
        if r.oom_kills is not None:
            lines[OOM].append(f"balloond_guest_oom_kills_total{{{g}}} {fmt(r.oom_kills)}")
        if r.floor_bytes is not None:
            lines[FLOOR].append(f"balloond_guest_floor_bytes{{{g}}} {fmt(r.floor_bytes)}")
        lines[WORKING_SET].append(
            f"balloond_guest_working_set_bytes{{{g}}} {fmt(r.working_set_bytes or 0)}"
        )
        lines[RESERVE].append(
            f"balloond_guest_surge_reserve_bytes{{{g}}} {fmt(r.surge_reserve_bytes or 0)}"
        )

    def family_bytes(self, index: int) -> bytes:
        """One family's part of the exposition text."""
        name, kind, help_text = _GUEST_FAMILIES[index]
        head = f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"
        lines = self.lines[index]
        return (head + "\n".join(lines) + "\n" if lines else head).encode()

    def text(self) -> str:
        return b"".join(self.family_bytes(i) for i in range(len(_GUEST_FAMILIES))).decode()


def daemon_families(
    d: DaemonPort, guests: GuestLines, lag: LoopLag | None, scrape_loop_s: float | None
) -> Iterator[Metric]:
    """The daemon-wide families (a handful of samples)."""
    states = GaugeMetricFamily("balloond_guests", "Managed guests by link state", labels=["state"])
    for state, count in guests.by_state.items():
        states.add_metric([state], count)
    yield states
    yield GaugeMetricFamily(
        "balloond_reclaimed_bytes",
        "Memory given back to the host: boot size minus actual, summed over guests",
        value=guests.reclaimed,
    )
    yield GaugeMetricFamily(
        "balloond_guests_under_pressure",
        "Guests whose last decision was to give memory back because they needed it",
        value=guests.under_pressure,
    )
    yield CounterMetricFamily("balloond_control_cycles", "Host planner cycles run", value=d.cycles)
    yield CounterMetricFamily(
        "balloond_reload_failures", "Config reloads refused as invalid", value=d.reload_failures
    )
    yield GaugeMetricFamily(
        "balloond_reload_error",
        "1 while the last reload was refused (the old config still runs)",
        value=1 if d.reload_error else 0,
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
    for failure in d.task_failures():
        failures.add_metric([failure.task], failure.failures)
        restarting.add_metric([failure.task], 1 if failure.restarting else 0)
    yield failures
    yield restarting
    if d.host is not None:
        yield GaugeMetricFamily(
            "balloond_host_total_bytes", "Host memory (MemTotal)", value=d.host.total_bytes
        )
        yield GaugeMetricFamily(
            "balloond_host_available_bytes",
            "Host memory available (MemAvailable)",
            value=d.host.available_bytes,
        )
    if lag is not None:
        yield GaugeMetricFamily(
            "balloond_event_loop_lag_seconds",
            f"Worst event-loop wake-up delay over the last {lag.samples.maxlen} ticks",
            value=lag.worst_s,
        )
    if scrape_loop_s is not None:
        yield GaugeMetricFamily(
            "balloond_scrape_loop_seconds",
            "How long the previous scrape held the event loop at once (it reads the guests "
            "a few hundred at a time)",
            value=scrape_loop_s,
        )


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        return self.families


def _daemon_text(
    d: DaemonPort, guests: GuestLines, lag: LoopLag | None, scrape_loop_s: float | None
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(daemon_families(d, guests, lag, scrape_loop_s))))
    ProcessCollector(registry=registry)
    return generate_latest(registry)


def scrape_now(d: DaemonPort, lag: LoopLag | None = None) -> bytes:
    """The whole exposition text in one go (for a few guests, and for tests)."""
    guests = GuestLines(time.time())
    for name, guest in sorted(d.guests.items()):
        guests.add(name, guest.reading())
    return guests.text().encode() + _daemon_text(d, guests, lag, None)


async def scrape(
    d: DaemonPort,
    lag: LoopLag | None = None,
    scrape_loop_s: float | None = None,
    *,
    chunk: int = SNAPSHOT_CHUNK,
) -> tuple[bytes, float]:
    """The exposition text, written ``chunk`` guests at a time with a turn of the event
    loop in between, so that no guest's poll waits for the whole fleet; and the longest
    the loop was held at once (seconds)."""
    clock = time.perf_counter
    guests = GuestLines(time.time())
    names = sorted(d.guests)
    held = 0.0
    for at in range(0, len(names), chunk):
        if at:
            await asyncio.sleep(0)
        started = clock()
        live = d.guests
        for name in names[at : at + chunk]:
            guest = live.get(name)
            if guest is not None:  # it may have gone while we wrote others
                guests.add(name, guest.reading())
        held = max(held, clock() - started)
    parts: list[bytes] = []
    for index in range(len(_GUEST_FAMILIES)):  # a family (thousands of lines) per turn
        await asyncio.sleep(0)
        started = clock()
        parts.append(guests.family_bytes(index))
        held = max(held, clock() - started)
    await asyncio.sleep(0)
    started = clock()
    parts.append(_daemon_text(d, guests, lag, scrape_loop_s))
    held = max(held, clock() - started)
    return b"".join(parts), held


class MetricsAdapter:
    """Serves ``GET /metrics`` at ``address`` until ``stop`` is set."""

    name = "metrics"

    def __init__(self, daemon: DaemonPort, *, address: str = DEFAULT_ADDRESS) -> None:
        self.host, self.port = parse_host_port(address)
        self.daemon = daemon
        self.lag = LoopLag()
        self._clients: set[asyncio.Task[Any]] = set()
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
            body, self.scrape_loop_s = await scrape(self.daemon, self.lag, self.scrape_loop_s)
            return "200 OK", CONTENT_TYPE_PLAIN_0_0_4, body, head_only
        if target == b"/":
            return "200 OK", text, b"balloond: metrics at /metrics\n", head_only
        return "404 Not Found", text, b"not found; try /metrics\n", head_only


def _url_host(bound: tuple[str, int]) -> tuple[str, int]:
    host, port = bound
    return (f"[{host}]" if ":" in host else host), port
