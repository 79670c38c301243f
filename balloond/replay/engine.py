"""balloond itself as a replay controller: the real engine with the daemon's books.

Nothing here decides anything: :func:`~balloond.core.policy.plan_host` and
:func:`~balloond.core.policy.decide` do, exactly as in the daemon, and each guest's books are the
daemon's own :class:`~balloond.core.policy.books.GuestBooks` (history bounded by ``history_s``,
last target, last deflate, someone else's moves, last reason, last report), so that the
engine sees the same :class:`~balloond.core.policy.GuestView` it would see in the daemon.

One difference, on purpose: the daemon plans the host in its own loop and each guest reads
the latest caps, which may be one poll old; here the plan is made right before the
decisions of the same poll.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from balloond.core.policy import ResolvedPolicy, decide, plan_host
from balloond.core.policy.books import GuestBooks
from balloond.core.stats import GuestSample, HostSnapshot
from balloond.runtime.config import Config


@dataclass(slots=True)
class _Guest:
    """One guest in the replay: its books, boot size, policy and decision counts."""

    books: GuestBooks
    boot_bytes: int
    policy: ResolvedPolicy
    decisions: Counter[str] = field(default_factory=Counter)


class EngineController:
    """balloond's engine driven by a config: policies per guest from ``[assign]``, the host
    reserve from ``[host]``, the poll interval and history from ``[daemon]``."""

    frees_pages = False

    def __init__(self, config: Config, *, name: str = "balloond") -> None:
        self.name = name
        self.config = config
        self.interval_s = config.daemon.poll_interval_s
        self._history_len = config.daemon.history_len
        self._guests: dict[str, _Guest] = {}

    def start(self, *, boot_bytes: Mapping[str, int]) -> None:
        self._guests = {
            name: _Guest(
                books=GuestBooks.new(name, history_len=self._history_len),
                boot_bytes=boot,
                policy=self.config.resolve_policy(guest_name=name, boot_bytes=boot),
            )
            for name, boot in boot_bytes.items()
        }

    @property
    def decisions(self) -> Counter[str]:
        """How often each reason came up, over every guest (for reports and tests)."""
        total: Counter[str] = Counter()
        for guest in self._guests.values():
            total.update(guest.decisions)
        return total

    def poll(
        self, *, now_s: float, samples: Mapping[str, GuestSample], host: HostSnapshot
    ) -> Mapping[str, int]:
        for name, sample in samples.items():
            self._guests[name].books.record(sample)
        pairs = []
        for g in self._guests.values():
            view = g.books.view(g.boot_bytes)
            if view is not None:
                pairs.append((view, g.policy))
        caps = plan_host(
            guests=pairs,
            host=host,
            reserve_bytes=self.config.host.reserve_bytes(host.total_bytes),
            now_s=now_s,
            poll_interval_s=self.interval_s,
        )
        targets: dict[str, int] = {}
        for view, policy in pairs:
            guest = self._guests[view.name]
            decision = decide(
                guest=view,
                policy=policy,
                host_cap_bytes=caps.get(view.name),
                now_s=now_s,
                poll_interval_s=self.interval_s,
            )
            guest.books.decided(decision, policy=policy, now_s=now_s)
            guest.decisions[str(decision.reason)] += 1
            target = decision.target_bytes
            if target is None:
                continue
            guest.books.applied(target, now_s=now_s, reason=decision.reason)
            targets[view.name] = target
        return targets
