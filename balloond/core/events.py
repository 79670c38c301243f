"""What a guest controller tells the daemon, as typed values.

Two kinds, kept apart: a :class:`BalloonChange` is news for everyone who watches (the MQTT
events topic, the demo's tally), the audit record as written; a :class:`HoldExpired` is a
signal for the daemon alone (save the operator's state), never published.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BalloonChange:
    """A balloon change decided, made or seen, as the audit log recorded it."""

    guest: str
    #: The audit record: time, actor, old and new bytes, reason, explanation, stats, bounds.
    record: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HoldExpired:
    """An operator's hold ran out and the guest went back to automatic."""

    guest: str


GuestEvent = BalloonChange | HoldExpired
