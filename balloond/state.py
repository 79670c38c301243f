"""What an operator told balloond, kept across restarts (SIGKILL included).

Manual targets, holds, pauses and policy overrides live in ``<state_dir>/intents.json``.
Every write goes to a temporary file that is fsynced and renamed over the old one, so a
crash leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from balloond.controller import Intent, Mode

log = logging.getLogger("balloond.state")
FILENAME = "intents.json"
VERSION = 1


def _intent_to_json(intent: Intent) -> dict[str, Any]:
    return {
        "mode": intent.mode.value,
        "manual_target_bytes": intent.manual_target_bytes,
        "hold_until": intent.hold_until,
        "policy_override": intent.policy_override,
    }


def _intent_from_json(obj: Any) -> Intent:
    if not isinstance(obj, dict):
        raise ValueError(f"not an object: {obj!r:.80}")
    target = obj.get("manual_target_bytes")
    hold = obj.get("hold_until")
    override = obj.get("policy_override")
    if target is not None and (not isinstance(target, int) or target <= 0):
        raise ValueError(f"bad manual_target_bytes {target!r}")
    if hold is not None and not isinstance(hold, int | float):
        raise ValueError(f"bad hold_until {hold!r}")
    if override is not None and not isinstance(override, str):
        raise ValueError(f"bad policy_override {override!r}")
    return Intent(
        mode=Mode(obj.get("mode", "auto")),
        manual_target_bytes=target,
        hold_until=float(hold) if hold is not None else None,
        policy_override=override,
    )


class StateStore:
    """Loads and saves guest intents in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILENAME

    def load(self) -> dict[str, Intent]:
        """Intents by guest name; a missing file is empty, a damaged one is logged and
        kept aside (renamed ``.bad``) so the daemon still starts."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            guests = raw.get("guests", {}) if isinstance(raw, dict) else None
            if not isinstance(guests, dict):
                raise ValueError("no 'guests' object")
            return {str(name): _intent_from_json(obj) for name, obj in guests.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s is damaged (%s); starting without saved holds", self.path, exc)
            with contextlib.suppress(OSError):
                self.path.replace(self.path.with_suffix(".bad"))
            return {}

    def save(self, intents: dict[str, Intent]) -> None:
        """Write atomically; only non-default intents are kept."""
        body = {
            "version": VERSION,
            "guests": {
                name: _intent_to_json(i) for name, i in sorted(intents.items()) if i != Intent()
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".intents.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
