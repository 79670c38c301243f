"""The soak: balloond as its own process, for ``--soak-minutes``, under injected faults.

``make soak`` (``MINUTES=10``; ``make soak MINUTES=2`` for a quick look) starts a real
Mosquitto, about 200 simulated guests (real QMP on unix sockets, found by discovery) and three
real lab guests, and runs ``balloond run`` against them while a fault injector works through
a seeded schedule:

* QEMUs killed and started again (simulated ones with SIGKILL or SIGTERM, real ones with
  SIGKILL), one real QEMU SIGSTOPped for 30 s;
* the broker stopped for 20 s;
* 1,000 hostile requests on the control socket and 1,000 on MQTT;
* valid and invalid configs reloaded;
* guests added and removed through discovery;
* memhog surges in the real guests;
* the daemon itself killed with SIGKILL once, and started again.

At the end it checks its invariants and prints them as a table (also written to
``benchmarks/out/soak.md``). ``make test`` leaves it out (marker ``soak``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Balloond
from mqtt_helpers import Broker, Peer, hostile_request, json_of

from balloond.core.units import GiB, MiB
from testkit.lab import LabGuest
from testkit.sim.fleet import SimFleet
from testkit.sim.qmp_server import SimGuestSpec

pytestmark = [pytest.mark.soak, pytest.mark.lab, pytest.mark.broker]

GuestFactory = Callable[..., Awaitable[LabGuest]]
SIM_GUESTS = 200
REAL_GUESTS = ("r1", "r2", "r3")
#: Simulated guests that are never killed or removed: they carry the operator's holds and
#: pauses, which must survive everything else.
HELD = tuple(f"sim-{i:03d}" for i in range(5))
PAUSED = tuple(f"sim-{i:03d}" for i in range(5, 10))
HOLD_SIZE = 768 * MiB
HOSTILE_N = 1000
#: Generous: the machine is loaded by the soak itself.
WAIT_S = 180.0
PREFIX = "soak/balloond"
RESULT = Path(__file__).resolve().parent.parent / "benchmarks" / "out" / "soak.md"
#: A soak this long or longer is the one RESULTS.md reports.
RECORD_MINUTES = 10.0


@pytest.fixture
def soak_minutes(request: pytest.FixtureRequest) -> float:
    minutes = float(request.config.getoption("--soak-minutes"))
    if minutes <= 0:
        raise pytest.UsageError("--soak-minutes must be above 0")
    return minutes


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths must fit in 107 bytes: sockets live in a short /tmp dir."""
    path = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- the daemon under test -------------------------------------------------------------------


def config_text(soak: Soak, *, cooldown_s: float = 30.0, valid: bool = True) -> str:
    guests = "".join(
        f'[[guests]]\nname = "{g.name}"\nqmp = "{g.qmp_socket}"\n\n' for g in soak.real
    )
    poll = "1.0" if valid else "-1"
    return f"""
[daemon]
poll_interval_s = {poll}
qmp_timeout_s = 3.0
device_recheck_s = 5.0
state_dir = "{soak.state_dir}"
runtime_dir = "{soak.run_dir}"
log_format = "text"

[discovery]
globs = ["{soak.sock_dir}/*.sock"]
rescan_interval_s = 2.0

[metrics]
enabled = false

[mqtt]
host = "127.0.0.1"
port = {soak.broker.port}
topic_prefix = "{PREFIX}"
timeout_s = 5.0
reconnect_max_s = 5.0
state_interval_s = 5.0

{guests}
[policies.default]
cooldown_s = {cooldown_s}
"""


@dataclass
class Check:
    what: str
    ok: bool
    detail: str


@dataclass
class Soak:
    """Everything one soak run holds, and what its injector has done."""

    workdir: Path
    short: Path
    minutes: float
    seed: int
    broker: Broker
    fleet: SimFleet
    real: list[LabGuest]
    rng: random.Random = field(init=False)
    faults: Counter[str] = field(default_factory=Counter)
    rss: list[tuple[float, int]] = field(default_factory=list)
    oom_kills: Counter[str] = field(default_factory=Counter)
    hostile: dict[str, tuple[int, int]] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None
    started_s: float = 0.0
    extras: int = 0
    #: When the daemon last started again (seconds into the run).
    restarted_s: float = 0.0
    injector_errors: list[str] = field(default_factory=list)
    #: Serialises what touches the daemon as a whole (SIGKILL, reloads, hostile bursts,
    #: the broker), so that one fault does not hide another's outcome.
    exclusive: asyncio.Lock = field(default_factory=asyncio.Lock)
    guest_locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.guest_locks = {g.name: asyncio.Lock() for g in self.real}

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def run_dir(self) -> Path:
        return self.short / "run"

    @property
    def sock_dir(self) -> Path:
        return self.short / "socks"

    @property
    def control(self) -> Path:
        return self.run_dir / "control.sock"

    @property
    def config(self) -> Path:
        return self.workdir / "balloond.toml"

    @property
    def log(self) -> Path:
        return self.workdir / "balloond.log"  # where Balloond writes its output

    def note(self, fault: str, detail: str = "") -> None:
        self.faults[fault] += 1
        where = f" ({detail})" if detail else ""
        print(f"  [{time.monotonic() - self.started_s:6.0f}s] {fault}{where}", flush=True)

    # --- the process -----------------------------------------------------------------------
    async def start_daemon(self) -> None:
        daemon = Balloond(workdir=self.workdir, config=self.config)
        await daemon.start()
        assert daemon.proc is not None
        self.proc = daemon.proc
        self.pids.append(self.proc.pid)
        deadline = time.monotonic() + WAIT_S
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError, TimeoutError):
                if (await self.request({"op": "status"}))["ok"]:
                    return
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"balloond did not come up:\n{self.log_tail()}")
            await asyncio.sleep(0.5)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def request(self, req: dict[str, Any] | bytes) -> dict[str, Any]:
        """One control-socket request, one reply."""
        line = req if isinstance(req, bytes) else json.dumps(req).encode()
        async with asyncio.timeout(30):
            reader, writer = await asyncio.open_unix_connection(str(self.control), limit=2**24)
            try:
                writer.write(line + b"\n")
                with contextlib.suppress(ConnectionError):
                    # A request over the size limit is answered, then the connection is
                    # closed while the rest of it is still being written.
                    await writer.drain()
                reply: dict[str, Any] = json.loads(await reader.readline())
                return reply
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def status(self) -> dict[str, Any]:
        reply = await self.request({"op": "status"})
        assert reply["ok"], reply
        result: dict[str, Any] = reply["result"]
        return result

    async def sample_rss(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.proc is not None and self.proc.returncode is None:
                rss = _rss_bytes(self.proc.pid)
                if rss is not None:
                    self.rss.append((time.monotonic() - self.started_s, rss))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await stop.wait()

    # --- the faults ------------------------------------------------------------------------
    async def kill_daemon(self) -> None:
        # No memhog surge while no daemon watches: a guest at its floor that surges then
        # is OOM-killed (that is what balloond is for). So the real guests are held until
        # the new daemon has them active again.
        async with self.exclusive, contextlib.AsyncExitStack() as held:
            for lock in self.guest_locks.values():
                await held.enter_async_context(lock)
            assert self.proc is not None
            self.note("daemon SIGKILLed and started again")
            self.proc.kill()
            await self.proc.wait()
            await self.start_daemon()
            self.restarted_s = time.monotonic() - self.started_s
            await self.wait_real_active()

    async def wait_real_active(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while True:
            guests = (await self.status())["guests"]
            if all(g["state"] == "active" for g in guests if g["name"] in REAL_GUESTS):
                return
            assert time.monotonic() < deadline, f"real guests not active:\n{self.log_tail()}"
            await asyncio.sleep(0.5)

    async def reload(self) -> None:
        async with self.exclusive:
            self.config.write_text(config_text(self, valid=False))
            refused = await self.request({"op": "reload"})
            assert refused["ok"] is False, refused
            assert refused["error"]["code"] == "bad_config", refused
            self.note("invalid config reloaded (refused)")
            self.config.write_text(config_text(self, cooldown_s=self.rng.choice([20.0, 30.0])))
            accepted = await self.request({"op": "reload"})
            assert accepted["ok"] is True, accepted
            self.note("valid config reloaded")
            assert self.proc is not None
            self.proc.send_signal(signal.SIGHUP)  # the same through the signal
            self.note("SIGHUP")

    async def stop_broker(self) -> None:
        async with self.exclusive:
            self.note("broker stopped for 20 s")
            await self.broker.stop()
            await asyncio.sleep(20)
            await self.broker.start()

    async def hostile_control(self) -> None:
        async with self.exclusive:
            rng = random.Random(self.seed + 1)
            answered = errors = 0
            for i in range(HOSTILE_N):
                body = hostile_request(i, rng)
                if not body.strip():
                    body = b"{}"  # a blank line is no request in a line protocol
                reply = await self.request(body)
                answered += 1
                errors += reply.get("ok") is False and bool(reply.get("error", {}).get("code"))
            self.hostile["control socket"] = (answered, errors)
            self.note(f"{HOSTILE_N} hostile requests on the control socket")

    async def hostile_mqtt(self) -> None:
        async with self.exclusive, Peer(self.broker.port, prefix=PREFIX) as peer:
            await peer.subscribe(peer.reply_topic, f"{PREFIX}/status")
            # After a broker outage the daemon needs a moment to come back and subscribe.
            await peer.wait_for(
                lambda m: m.topic.value == f"{PREFIX}/status" and m.payload == b"online",
                timeout_s=WAIT_S,
            )
            rng = random.Random(self.seed + 2)
            for start in range(0, HOSTILE_N, 100):
                for i in range(start, start + 100):
                    await peer.publish_request(
                        hostile_request(i, rng), correlation=i.to_bytes(4, "big")
                    )
                last = (start + 99).to_bytes(4, "big")
                await peer.wait_for(
                    lambda m, c=last: getattr(m.properties, "CorrelationData", None) == c,
                    timeout_s=WAIT_S,
                )
            await asyncio.sleep(1.0)  # let any duplicate show before counting
            replies = [m for m in peer.messages if m.topic.value == peer.reply_topic]
            by_corr = Counter(getattr(m.properties, "CorrelationData", None) for m in replies)
            errors = sum(
                1
                for m in replies
                if json_of(m).get("ok") is False and json_of(m).get("error", {}).get("code")
            )
            once = all(n == 1 for n in by_corr.values()) and len(by_corr) == HOSTILE_N
            self.hostile["MQTT"] = (len(replies) if once else -len(replies), errors)
            self.note(f"{HOSTILE_N} hostile requests on MQTT")

    async def sim_fault(self) -> None:
        movable = [n for n in self.fleet.names if n not in HELD + PAUSED]
        name = self.rng.choice(movable)
        guest = self.fleet.guest(name)
        choice = self.rng.random()
        if choice < 0.4:
            self.note("simulated QEMU SIGKILLed and restarted", name)
            await guest.kill(sig="SIGKILL")
            await asyncio.sleep(self.rng.uniform(1, 5))
            await guest.restart()
        elif choice < 0.7:
            self.note("simulated QEMU SIGTERMed (socket gone) and restarted", name)
            await guest.kill(sig="SIGTERM")
            await asyncio.sleep(self.rng.uniform(3, 8))
            await guest.restart()
        elif choice < 0.85 or not any(n.startswith("extra-") for n in self.fleet.names):
            self.extras += 1
            extra = f"extra-{self.extras:03d}"
            self.note("guest added (discovery)", extra)
            await self.fleet.add(SimGuestSpec(extra, GiB))
        else:
            extra = self.rng.choice([n for n in self.fleet.names if n.startswith("extra-")])
            self.note("guest removed (discovery)", extra)
            await self.fleet.guest(extra).kill(sig="SIGTERM")

    async def count_ooms(self, guest: LabGuest) -> None:
        """Add the guest's OOM kills so far (a QEMU about to be killed takes them along)."""
        with contextlib.suppress(Exception):
            # A guest that is not answering its console now adds nothing here; its OOM
            # kills show in its kernel log, which the final check reads too.
            self.oom_kills[guest.name] += await guest.oom_kills(timeout_s=30)

    async def real_kill(self, guest: LabGuest) -> None:
        async with self.guest_locks[guest.name]:
            await self.count_ooms(guest)
            self.note("real QEMU SIGKILLed and booted again", guest.name)
            await guest.restart(boot_timeout_s=WAIT_S)
            await self.wait_real_active()

    async def real_sigstop(self, guest: LabGuest) -> None:
        async with self.guest_locks[guest.name]:
            self.note("real QEMU SIGSTOPped for 30 s", guest.name)
            guest.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(30)
            finally:
                guest.send_signal(signal.SIGCONT)

    async def surge(self, guest: LabGuest) -> None:
        async with self.guest_locks[guest.name]:
            mib = self.rng.choice([160, 200, 240])
            self.note("memhog surge at 50 MiB/s in a real guest", f"{guest.name}, {mib} MiB")
            hog = await guest.start_memhog(mib=mib, rate_mib_s=50)
            await hog.wait_allocated(timeout_s=WAIT_S)
            await asyncio.sleep(self.rng.uniform(5, 15))
            await hog.stop()

    def schedule(self, duration_s: float) -> list[tuple[float, str, Callable[[], Awaitable[None]]]]:
        """The seeded plan: the named faults at fixed points, the rest at random times."""
        r1, r2, r3 = self.real
        plan: list[tuple[float, str, Callable[[], Awaitable[None]]]] = [
            (0.08, "hostile control", self.hostile_control),
            (0.15, "sigstop", lambda: self.real_sigstop(r1)),
            (0.20, "reload", self.reload),
            (0.30, "daemon kill", self.kill_daemon),
            (0.40, "real kill", lambda: self.real_kill(r2)),
            (0.45, "broker", self.stop_broker),
            (0.60, "hostile mqtt", self.hostile_mqtt),
            (0.70, "real kill", lambda: self.real_kill(r3)),
            (0.75, "reload", self.reload),
        ]
        for _ in range(max(4, int(duration_s / 8))):
            plan.append((self.rng.uniform(0.05, 0.85), "sim", self.sim_fault))
        for _ in range(max(3, int(duration_s / 40))):
            guest = self.rng.choice(self.real)
            plan.append((self.rng.uniform(0.05, 0.8), "surge", lambda g=guest: self.surge(g)))
        return sorted(((f * duration_s, n, a) for f, n, a in plan), key=lambda p: p[0])

    async def inject(self, duration_s: float) -> None:
        async with asyncio.TaskGroup() as group:
            for at_s, name, action in self.schedule(duration_s):
                delay = at_s - (time.monotonic() - self.started_s)
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(self._guarded(name, action), name=f"soak:{name}")

    async def _guarded(self, name: str, action: Callable[[], Awaitable[None]]) -> None:
        """A fault that could not be injected is a row in the table, not the end of the run."""
        try:
            await action()
        except Exception as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.injector_errors.append(f"{name}: {type(exc).__name__}: {first_line}"[:200])
            print(f"  injector: {name} failed: {exc!r}", flush=True)


# --- the checks --------------------------------------------------------------------------


def rss_growth(samples: list[tuple[float, int]], *, after_s: float) -> tuple[float, float]:
    """Least-squares RSS growth over the samples after ``after_s``: (bytes over that span,
    mean bytes)."""
    points = [(t, rss) for t, rss in samples if t >= after_s]
    if len(points) < 3:
        return 0.0, float(points[0][1]) if points else 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (r - mean_r) for t, r in points) / var if var else 0.0
    return slope * (points[-1][0] - points[0][0]), mean_r


def audit_violations(path: Path) -> tuple[int, list[str]]:
    records = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    bad = []
    for r in records:
        if r.get("dry_run") or r.get("actor") not in ("engine", "operator"):
            continue
        new, floor, top = r["new_bytes"], r.get("floor_bytes"), r.get("max_bytes")
        if (floor is not None and new < floor) or (top is not None and new > top):
            bad.append(f"{r['guest']}: {r['reason']} {new >> 20} MiB outside {floor}..{top}")
    return len(records), bad


def table(checks: list[Check]) -> str:
    width = max(len(c.what) for c in checks)
    lines = [f"| {'invariant'.ljust(width)} | held | detail |", f"|{'-' * (width + 2)}|------|---|"]
    for c in checks:
        lines.append(f"| {c.what.ljust(width)} | {'yes ' if c.ok else 'NO  '} | {c.detail} |")
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def soak_world(
    tmp_path: Path, short: Path, make_guest: GuestFactory, minutes: float, seed: int
) -> AsyncIterator[Soak]:
    broker = Broker(tmp_path)
    await broker.start()
    try:
        (short / "socks").mkdir(parents=True)
        real = list(await asyncio.gather(*(make_guest(n, memory_mib=512) for n in REAL_GUESTS)))
        specs = [SimGuestSpec(f"sim-{i:03d}", GiB) for i in range(SIM_GUESTS)]
        async with SimFleet(dir=short / "socks", guests=specs) as fleet:
            soak = Soak(
                workdir=tmp_path,
                short=short,
                minutes=minutes,
                seed=seed,
                broker=broker,
                fleet=fleet,
                real=real,
            )
            try:
                yield soak
            finally:
                # Whatever happened, no daemon outlives the soak.
                if soak.proc is not None and soak.proc.returncode is None:
                    soak.proc.kill()
                    await soak.proc.wait()
    finally:
        await broker.stop()


async def test_soak_under_faults(
    tmp_path: Path,
    short_dir: Path,
    make_guest: GuestFactory,
    soak_minutes: float,
    request: pytest.FixtureRequest,
) -> None:
    seed = int(request.config.getoption("--soak-seed"))
    duration_s = soak_minutes * 60
    async with soak_world(tmp_path, short_dir, make_guest, soak_minutes, seed) as soak:
        soak.config.write_text(config_text(soak))
        print(f"\nsoak: {duration_s:.0f} s, seed {seed}, {SIM_GUESTS} simulated + 3 real guests")
        await soak.start_daemon()

        async def settled() -> bool:
            guests = (await soak.status())["guests"]
            active = sum(g["state"] == "active" for g in guests)
            real_active = all(g["state"] == "active" for g in guests if g["name"] in REAL_GUESTS)
            return real_active and active >= 0.9 * (SIM_GUESTS + len(REAL_GUESTS))

        deadline = time.monotonic() + WAIT_S
        while not await settled():
            assert time.monotonic() < deadline, f"guests not active:\n{soak.log_tail()}"
            await asyncio.sleep(1)
        for name in HELD:
            reply = await soak.request(
                {"op": "set", "guest": name, "size": HOLD_SIZE, "hold": "1d"}
            )
            assert reply["ok"], reply
        for name in PAUSED:
            assert (await soak.request({"op": "pause", "guest": name}))["ok"]
        holds_before = {g["name"]: g for g in (await soak.status())["guests"]}

        soak.started_s = time.monotonic()
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(soak.sample_rss(stop_sampling), name="soak:rss")
        try:
            await soak.inject(duration_s)
            left = duration_s - (time.monotonic() - soak.started_s)
            if left > 0:
                await asyncio.sleep(left)
        finally:
            stop_sampling.set()
            await sampler

        # --- the end: look, then stop everything and look again ---------------------------
        checks: list[Check] = [
            Check(
                "every fault injected as planned",
                not soak.injector_errors,
                "; ".join(soak.injector_errors[:3]) or f"{sum(soak.faults.values())} faults",
            )
        ]
        assert soak.proc is not None
        alive = soak.proc.returncode is None
        status = await soak.status() if alive else {"guests": []}
        checks.append(
            Check(
                "the daemon alive",
                alive,
                f"pid {soak.proc.pid}, {len(status['guests'])} guests, "
                f"{sum(g['state'] == 'active' for g in status['guests'])} active",
            )
        )
        n_records, bad = audit_violations(soak.state_dir / "audit.jsonl")
        checks.append(
            Check(
                "no target below its floor or above its max",
                not bad,
                f"{n_records} audit records" + (f"; {bad[:3]}" if bad else ""),
            )
        )
        for guest in soak.real:
            await soak.count_ooms(guest)
        kernel_ooms = sum(
            g.kernel_log.read_text(errors="replace").count("Out of memory: Killed")
            for g in soak.real
            if g.kernel_log.exists()
        )
        total_ooms = sum(soak.oom_kills.values())
        checks.append(
            Check(
                "no OOM kill in a real guest",
                total_ooms == 0 and kernel_ooms == 0,
                f"{total_ooms} counted in the guests, {kernel_ooms} in the last boots' logs",
            )
        )
        now = {g["name"]: g for g in status["guests"]}
        intact = [
            n
            for n in HELD
            if now.get(n, {}).get("mode") == "manual"
            and now[n]["manual_target_bytes"] == HOLD_SIZE
            and now[n]["hold_until"] == holds_before[n]["hold_until"]
        ] + [n for n in PAUSED if now.get(n, {}).get("mode") == "paused"]
        checks.append(
            Check(
                "every operator hold and pause intact",
                len(intact) == len(HELD) + len(PAUSED),
                f"{len(intact)} of {len(HELD) + len(PAUSED)}",
            )
        )
        answered = [
            f"{where}: {n} replies, {errs} errors" for where, (n, errs) in soak.hostile.items()
        ]
        checks.append(
            Check(
                "every hostile request answered with one error",
                len(soak.hostile) == 2
                and all(n == errs == HOSTILE_N for n, errs in soak.hostile.values()),
                "; ".join(answered) or "not sent",
            )
        )
        # The second half, and at least a history's length (60 s) after the restart, when
        # a new process's per-guest history is full.
        # (A short run has no such stretch: its last quarter, then.)
        window_s = min(max(duration_s / 2, soak.restarted_s + 75.0), duration_s * 0.75)
        growth, mean = rss_growth(soak.rss, after_s=window_s)
        flat = growth < max(8 * MiB, 0.05 * mean)
        rss_mib = [r >> 20 for _, r in soak.rss]
        checks.append(
            Check(
                f"RSS with no upward trend (from {window_s:.0f} s)",
                flat,
                f"trend {growth / MiB:+.1f} MiB over the second half, mean {mean / MiB:.0f} MiB "
                f"(min {min(rss_mib, default=0)}, max {max(rss_mib, default=0)} MiB)",
            )
        )
        soak.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WAIT_S):
            code = await soak.proc.wait()
        log = soak.log.read_text(errors="replace")
        late = log.count("did not stop in") + log.count("ignores cancellation")
        await soak.fleet.close()
        for guest in soak.real:
            await guest.stop()
        qemus = _our_qemus()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        checks.append(
            Check(
                "no QEMU or task left behind",
                code == 0 and late == 0 and qemus == 0 and not tasks,
                f"daemon exit {code}, {late} late tasks at its stop, {qemus} QEMUs, "
                f"{len(tasks)} test tasks",
            )
        )

    faults = "\n".join(f"- {kind}: {n}" for kind, n in sorted(soak.faults.items()))
    report = (
        f"Soak: {soak_minutes:g} min, seed {seed}, {SIM_GUESTS} simulated + "
        f"{len(REAL_GUESTS)} real guests, daemon pids {soak.pids}\n\n"
        f"Faults injected ({sum(soak.faults.values())}):\n\n{faults}\n\n{table(checks)}\n"
    )
    print("\n" + report)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(report)
    if soak_minutes >= RECORD_MINUTES:
        record(report, soak_minutes=soak_minutes, seed=seed, ok=not any(not c.ok for c in checks))
    failed = [c.what for c in checks if not c.ok]
    assert not failed, f"invariants broken: {failed}\n{log[-3000:]}"


def record(report: str, *, soak_minutes: float, seed: int, ok: bool) -> None:
    """A full-length soak becomes RESULTS.md's Reliability section (and stays in
    ``benchmarks/reliability.md`` for ``make bench`` to carry over)."""
    from benchmarks import run

    command = "make soak" + ("" if soak_minutes == 10 else f" MINUTES={soak_minutes:g}")
    lines = [
        run.RELIABILITY_HEADING,
        "",
        "Written by the soak itself (`tests/test_soak.py`); do not edit by hand.",
        "",
        f"- Command: `{command}` (seed {seed})",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC",
        *run.machine(),
        f"- Result: {'every invariant held' if ok else 'INVARIANTS BROKEN'}",
        "",
        report,
    ]
    run.RELIABILITY.write_text("\n".join(lines), encoding="utf-8")
    run.REPORT.write_text(run.with_carried(run.REPORT.read_text(encoding="utf-8")))


def _rss_bytes(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


def _our_qemus() -> int:
    """QEMU processes this test process started that are still running."""
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _is_our_qemu(p))


def _is_our_qemu(proc_dir: Path) -> bool:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:
        return False
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    return comm.startswith("qemu-system") and int(ppid) == os.getpid() and state != "Z"
