"""balloond itself as a replay controller: the real engine with the daemon's books.

Nothing here decides anything: :func:`~balloond.policy.plan_host` and
:func:`~balloond.policy.decide` do, exactly as in the daemon. This module only keeps, per
guest, what :class:`~balloond.controller.GuestController` keeps between cycles — a history
bounded by ``history_s``, the last target, when the balloon was last deflated, when someone
else last moved it (:func:`~balloond.controller.moved_externally`), the reason of the last
change — so that the engine sees the same :class:`~balloond.policy.GuestView` it would see
in the daemon.

One difference, on purpose: the daemon plans the host in its own loop and each guest reads
the latest caps, which may be one poll old; here the plan is made right before the
decisions of the same poll.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from balloond.config import Config
from balloond.controller import moved_externally
from balloond.policy import GuestView, Reason, ResolvedPolicy, decide, plan_host
from balloond.stats import GuestSample, HostSnapshot


@dataclass(slots=True)
class _Guest:
    """One guest's books between polls (the offline twin of GuestController's fields)."""

    name: str
    boot_bytes: int
    policy: ResolvedPolicy
    history: deque[GuestSample]
    target_bytes: int | None = None
    last_deflate_s: float | None = None
    external_change_s: float | None = None
    last_reason: Reason | None = None
    decisions: Counter[str] = field(default_factory=Counter)

    def notice(self, sample: GuestSample) -> None:
        """Accept a move balloond did not make, as GuestController._notice_external does."""
        previous = self.history[-1].actual_bytes if self.history else None
        if moved_externally(
            target_bytes=self.target_bytes,
            previous_actual_bytes=previous,
            actual_bytes=sample.actual_bytes,
        ):
            self.external_change_s = sample.t_s
            if previous is not None and sample.actual_bytes > previous:
                self.last_deflate_s = sample.t_s
            self.target_bytes = sample.actual_bytes
        self.history.append(sample)

    def view(self) -> GuestView:
        return GuestView(
            name=self.name,
            boot_bytes=self.boot_bytes,
            history=tuple(self.history),
            target_bytes=self.target_bytes,
            last_deflate_s=self.last_deflate_s,
            external_change_s=self.external_change_s,
            last_reason=self.last_reason,
        )


class EngineController:
    """balloond's engine driven by a config: policies per guest from ``[assign]``, the host
    reserve from ``[host]``, the poll interval and history from ``[daemon]``."""

    def __init__(self, config: Config, *, name: str = "balloond") -> None:
        self.name = name
        self.config = config
        self.interval_s = config.daemon.poll_interval_s
        self._history_len = config.daemon.history_len
        self._guests: dict[str, _Guest] = {}

    def start(self, *, boot_bytes: Mapping[str, int]) -> None:
        self._guests = {
            name: _Guest(
                name=name,
                boot_bytes=boot,
                policy=self.config.resolve_policy(guest_name=name, boot_bytes=boot),
                history=deque(maxlen=self._history_len),
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
            self._guests[name].notice(sample)
        pairs = [(g.view(), g.policy) for g in self._guests.values()]
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
            guest.decisions[str(decision.reason)] += 1
            target = decision.target_bytes
            if target is None:
                continue
            # What GuestController._apply and _act record after a change.
            if target > guest.history[-1].actual_bytes:
                guest.last_deflate_s = now_s
            guest.target_bytes = target
            guest.last_reason = decision.reason
            targets[view.name] = target
        return targets
