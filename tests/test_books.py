"""One guest's books between polls, kept alike by the daemon and the offline replay."""

from __future__ import annotations

import functools
import itertools
from collections import Counter

from balloond.adapters.audit_log import AuditLog
from balloond.core.link import LinkState
from balloond.core.policy import Reason
from balloond.core.policy.books import GuestBooks
from balloond.core.stats import BalloonStats, GuestSample, HostSnapshot
from balloond.core.units import GiB, MiB
from balloond.replay import EngineController
from balloond.replay.model import GuestModel, GuestParams
from balloond.replay.traces import Trace
from balloond.runtime.config import parse_config
from balloond.service.guest import GuestController, Timing

RAM = 2 * GiB
ROOMY_HOST = HostSnapshot(total_bytes=64 * GiB, available_bytes=60 * GiB)


def _sample(t_s: float, actual_mib: int, *, last_update: int) -> GuestSample:
    stats = BalloonStats(
        last_update=last_update, total_bytes=actual_mib * MiB, available_bytes=100 * MiB
    )
    return GuestSample(t_s=t_s, actual_bytes=actual_mib * MiB, stats=stats)


def test_a_move_away_from_our_target_is_accepted_and_reported_once() -> None:
    books = GuestBooks.new("g", history_len=10)
    books.record(_sample(0.0, 1024, last_update=100))
    books.applied(512 * MiB, now_s=0.5, reason=Reason.IDLE)
    assert books.record(_sample(1.0, 600, last_update=101)) is None  # on its way down
    move = books.record(_sample(2.0, 900, last_update=102))  # the guest deflated it
    assert move is not None
    assert (move.target_bytes, move.actual_bytes, move.grew) == (512 * MiB, 900 * MiB, True)
    assert books.target_bytes == 900 * MiB  # adopted
    assert books.external_change_s == books.last_deflate_s == 2.0
    assert books.record(_sample(3.0, 900, last_update=103)) is None


def test_reports_are_fresh_only_when_last_update_moves() -> None:
    books = GuestBooks.new("g", history_len=10)
    books.connected(5.0)
    assert books.last_report_s == 5.0
    books.record(_sample(6.0, 1024, last_update=100))
    books.record(_sample(7.0, 1024, last_update=100))
    assert books.last_report_s == 6.0
    books.connected(9.0)  # a reconnect keeps the clock: the guest is no fresher for it
    assert books.last_report_s == 6.0
    assert not books.history


class ModelLink:
    """The transport seam: a GuestController's link to a simulated guest's memory model."""

    state = LinkState.ACTIVE

    def __init__(self, model: GuestModel) -> None:
        self.model = model
        self.boot_bytes = model.params.ram_bytes
        self.on_event = None
        self.targets: list[int] = []

    async def read_stats(self, *, timeout_s: float) -> BalloonStats:
        return self.model.stats

    async def current_actual(self, *, timeout_s: float) -> int:
        return self.model.actual_bytes

    async def read_io_bytes(self, *, timeout_s: float) -> int | None:
        return self.model.read_bytes

    async def set_target(self, target_bytes: int, *, timeout_s: float) -> None:
        self.targets.append(target_bytes)
        self.model.set_target(target_bytes)


def _model(trace: Trace) -> GuestModel:
    model = GuestModel(GuestParams(ram_bytes=RAM), trace)
    model.set_polling_interval(1)
    return model


async def test_the_daemon_and_the_replay_decide_alike_on_the_same_guest() -> None:
    """The same guest (a hot page cache, then a surge, then calm), polled once a second for
    five minutes by a GuestController and by the replay's EngineController: the same
    targets at the same moments, the same reasons, the working-set signal included."""
    trace = Trace(
        times_s=(0.0, 100.0, 103.0, 180.0, 190.0),
        anon_bytes=tuple(int(RAM * share) for share in (0.1, 0.1, 0.55, 0.55, 0.15)),
        cache_bytes=(int(RAM * 0.5),) * 5,
        hot_cache_bytes=(int(RAM * 0.4),) * 5,
        cache_touch_per_s=0.05,
    )  # fmt: skip
    config = parse_config({"metrics": {"enabled": False}})
    daemon_model, replay_model = _model(trace), _model(trace)
    now = 0.0
    link = ModelLink(daemon_model)
    ctrl = GuestController(
        name="g",
        link=link,  # type: ignore[arg-type]  # the seam: a model instead of QMP
        policy_name="default",
        policy_for=functools.partial(config.policies["default"].resolve, name="default"),
        timing=Timing(
            poll_interval_s=1.0,
            qmp_timeout_s=1.0,
            connect_timeout_s=1.0,
            history_len=config.daemon.history_len,
        ),
        audit=AuditLog(None),
        clock=lambda: now,
    )
    replay = EngineController(config)
    replay.start(boot_bytes={"g": RAM})
    daemon_moves: list[tuple[float, int]] = []
    replay_moves: list[tuple[float, int]] = []
    for step in range(300):
        now = float(step)
        daemon_model.advance_to(now)
        replay_model.advance_to(now)
        sent = len(link.targets)
        await ctrl._cycle()
        daemon_moves += [(now, t) for t in link.targets[sent:]]
        stats = replay_model.stats
        sample = GuestSample(
            t_s=now,
            actual_bytes=replay_model.actual_bytes,
            stats=stats if stats.valid else None,
            read_bytes=replay_model.read_bytes,
        )
        for target in replay.poll(now_s=now, samples={"g": sample}, host=ROOMY_HOST).values():
            replay_model.set_target(target)
            replay_moves.append((now, target))
    assert daemon_moves == replay_moves
    assert len(daemon_moves) >= 3, "the trace should make the engine inflate and deflate"
    assert any(t > before for (_, before), (_, t) in itertools.pairwise(daemon_moves))
    assert Counter(ctrl.decisions) == replay.decisions
    assert ctrl.decisions["working-set"] > 0, ctrl.decisions
