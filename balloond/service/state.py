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
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from balloond.service.guest import Intent, Mode

log = logging.getLogger("balloond.service.state")
FILENAME = "intents.json"
VERSION = 1


def _intent_to_json(intent: Intent) -> dict[str, Any]:
    return {
        "mode": intent.mode.value,
        "manual_target_bytes": intent.manual_target_bytes,
        "hold_until": intent.hold_until,
        "policy_override": intent.policy_override,
    }


class _SavedIntent(BaseModel):
    """One guest's entry in the file, validated as it is read back."""

    model_config = ConfigDict(frozen=True, extra="ignore")  # newer keys: ignored, not fatal

    mode: Mode = Mode.AUTO
    manual_target_bytes: Annotated[int, Field(gt=0, strict=True)] | None = None
    hold_until: Annotated[float, Field(allow_inf_nan=False)] | None = None
    policy_override: Annotated[str, Field(strict=True)] | None = None

    def intent(self) -> Intent:
        return Intent(
            mode=self.mode,
            manual_target_bytes=self.manual_target_bytes,
            hold_until=self.hold_until,
            policy_override=self.policy_override,
        )


class _StateFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: int = VERSION
    guests: dict[str, _SavedIntent]


class StateStore:
    """Loads and saves guest intents in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILENAME

    def load(self) -> dict[str, Intent]:
        """Intents by guest name; a missing file is empty, a damaged one is logged and
        kept aside (renamed ``.bad``) so the daemon still starts."""
        try:
            saved = _StateFile.model_validate_json(self.path.read_bytes())
            return {name: entry.intent() for name, entry in saved.guests.items()}
        except FileNotFoundError:
            return {}
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
            )
            log.error("%s is damaged (%s); starting without saved holds", self.path, problems)
            with contextlib.suppress(OSError):
                self.path.replace(self.path.with_suffix(".bad"))
            return {}
        except OSError as exc:
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
