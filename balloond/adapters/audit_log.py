"""The audit log: one JSON line per balloon change, decided, made or seen.

Operators and tools (``jq``, log shippers) read it to learn what balloond did and why.
Records are plain JSON with amounts in bytes; ``time`` is UTC ISO 8601. A write failure is
logged once and never stops control: the audit log serves the operator, not the guests.

Given an executor (the daemon's one I/O thread), records are encoded and written there, in
order, so a slow disk never holds the event loop; the records of one turn of the event loop
go over in one batch (thousands of guests change together), and :meth:`AuditLog.close` is
queued behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("balloond.adapters.audit_log")

#: Records go to the I/O thread together, at most this long after the first of them: at
#: thousands of guests a hand-over per record cost more than writing it.
BATCH_S = 0.1


class AuditLog:
    """Appends records to ``path`` (None: keep nothing), flushing after each line; in
    ``executor`` (one worker, so lines keep their order) when given, else right away."""

    def __init__(self, path: Path | None, *, executor: Executor | None = None) -> None:
        self.path = path
        self._executor = executor
        self._file: IO[str] | None = None
        self._failed = False
        #: Records of this turn of the event loop, sent to the executor together.
        self._batch: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """Add ``time`` and append ``record``; returns the record as written (which the
        caller must not change: it is encoded later, in the I/O thread)."""
        full = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **record}
        if self.path is None:
            return full
        if self._executor is None:
            self._append([full])
            return full
        if not self._batch:
            try:
                asyncio.get_running_loop().call_later(BATCH_S, self._send)
            except RuntimeError:  # no loop: write now
                self._batch.append(full)
                self._send()
                return full
        self._batch.append(full)
        return full

    def _send(self) -> None:
        batch, self._batch = self._batch, []
        if batch and self._executor is not None:
            self._executor.submit(self._append, batch)

    def close(self) -> None:
        """Close the file once every line written before is out."""
        self._send()
        if self._executor is None:
            self._close()
        else:
            self._executor.submit(self._close)

    def _append(self, records: list[dict[str, Any]]) -> None:
        assert self.path is not None
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
            self._file.flush()
            self._failed = False
        except OSError as exc:
            if not self._failed:
                log.error("cannot write audit log %s: %s", self.path, exc)
            self._failed = True
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
