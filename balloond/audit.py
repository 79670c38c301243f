"""The audit log: one JSON line per balloon change, decided, made or seen.

Operators and tools (``jq``, log shippers) read it to learn what balloond did and why.
Records are plain JSON with amounts in bytes; ``time`` is UTC ISO 8601. A write failure is
logged once and never stops control: the audit log serves the operator, not the guests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("balloond.audit")


class AuditLog:
    """Appends records to ``path`` (None: keep nothing), flushing after each line."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self._failed = False

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Add ``time`` and append ``record``; returns the record as written."""
        full = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **record}
        if self.path is None:
            return full
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps(full, separators=(",", ":")) + "\n")
            self._file.flush()
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("cannot write audit log %s: %s", self.path, exc)
            self._failed = True
            self.close()
        return full

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
