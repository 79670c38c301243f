"""The policy engine: balloond's functional core.

A guest's facts in (read, never changed), a frozen decision out; no I/O, no clock reads, no
logging. That is what lets
the same code run in the daemon, in the simulator and in ``balloonctl explain``, and be
checked with property tests. Nothing here imports pydantic or an adapter.

Modules, in the order data flows through them:

* ``inputs``   - :class:`GuestView` (one guest's samples and history of moves; the
  :class:`GuestFacts` protocol, which the daemon's books meet too) and
  :class:`ResolvedPolicy` (a policy in bytes, made by ``balloond.runtime.config.Policy.resolve``).
* ``observe``  - reads the last few samples: used memory, trend, staleness.
* ``planner``  - :func:`plan_host`: caps per guest while the host is short of memory.
* ``engine``   - :func:`decide`: one guest's target and the reason for it.
* ``decision`` - :class:`Decision` and its stable :class:`Reason` codes.
* ``explain``  - how numbers read to people (MiB, percent of boot memory).

One cycle of the supervisor::

    caps = plan_host(guests=pairs, host=snapshot, reserve_bytes=reserve,
                     now_s=now, poll_interval_s=interval)
    for guest, policy in pairs:
        decision = decide(guest=guest, policy=policy, host_cap_bytes=caps.get(guest.name),
                          now_s=now, poll_interval_s=interval)
"""

from balloond.core.policy.decision import Decision, Reason
from balloond.core.policy.engine import decide, floor_bytes, horizon_s
from balloond.core.policy.inputs import GuestFacts, GuestView, Reclaim, ResolvedPolicy
from balloond.core.policy.observe import Observation, Unobservable, observe, stale_after_s
from balloond.core.policy.planner import plan_host

__all__ = [
    "Decision",
    "GuestFacts",
    "GuestView",
    "Observation",
    "Reason",
    "Reclaim",
    "ResolvedPolicy",
    "Unobservable",
    "decide",
    "floor_bytes",
    "horizon_s",
    "observe",
    "plan_host",
    "stale_after_s",
]
