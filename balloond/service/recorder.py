"""``balloond run --record-trace DIR``: each guest's workload, written as a replayable trace.

An operator who wants to try a policy on their own guests before deploying it records what
the guests did, then replays it with ``balloond simulate``. This adapter appends, for every
guest, one point per guest stats report to ``DIR/<guest>.json`` in the trace format of
:mod:`balloond.replay.traces` (``balloond-trace/1``):

* ``anon_bytes``: used memory, ``actual - available`` — what the guest could not give
  back (its programs, plus the kernel's own share, which the replay's model adds again,
  so a replay errs towards more demand, never less);
* ``cache_bytes``: the guest's page cache (``stat-disk-caches``);
* ``t_s``: seconds since the first point; ``ram_bytes``: the guest's boot memory.

It stays off the control loop's path: the controllers already keep each guest's recent
samples (``history_s`` of them), so one task reads those every few seconds and writes the
new points in a worker thread. Only the points not yet written are held, at most
:data:`MAX_PENDING_POINTS` per guest (the oldest are dropped if the disk stays unwritable).
The file stays valid JSON between flushes: each flush rewrites only its closing brackets.
When balloond restarts, recording continues in the same file after its last point (the
time balloond was not running is left out); a file that is not a valid trace is moved to
``<guest>.json.old`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from balloond.replay.traces import FORMAT, Trace

if TYPE_CHECKING:
    from balloond.service.daemon import Daemon

log = logging.getLogger("balloond.service.recorder")

#: Seconds between two flushes (less when ``history_s`` is shorter: see ``_flush_every_s``).
FLUSH_EVERY_S = 5.0
#: Points kept per guest while they cannot be written (an hour of one-second reports).
MAX_PENDING_POINTS = 3600
#: How every trace file ends; a flush overwrites it with new points and writes it again.
_TAIL = b"\n  ]\n}\n"
DESCRIPTION = (
    "recorded by balloond run --record-trace: anon_bytes is used memory (actual - available), "
    "cache_bytes the page cache"
)

Point = tuple[float, int, int]  # (daemon clock seconds, anon bytes, cache bytes)


@dataclass(slots=True)
class _Track:
    """What has been read from one guest's samples, and what is still to be written."""

    last_t_s: float = float("-inf")
    last_update: int | None = None
    pending: deque[Point] = field(default_factory=lambda: deque(maxlen=MAX_PENDING_POINTS))
    ram_bytes: int = 0


@dataclass(slots=True)
class _File:
    """One trace file as written so far (touched only by the writer thread)."""

    #: Trace time of a point = daemon clock - origin.
    origin_s: float | None = None
    last_trace_t_s: float = float("-inf")
    exists: bool = False


def _point_line(t_s: float, anon: int, cache: int) -> str:
    t = round(t_s, 3)
    return "    " + json.dumps(
        {"t_s": int(t) if t.is_integer() else t, "anon_bytes": anon, "cache_bytes": cache}
    )


class TraceRecorder:
    """An adapter (see :mod:`balloond.service.serve`) that records every guest's trace."""

    name = "trace-recorder"

    def __init__(self, daemon: Daemon, directory: Path) -> None:
        self.daemon = daemon
        self.directory = directory
        self._tracks: dict[str, _Track] = {}
        self._files: dict[str, _File] = {}
        self._failing = False
        # A flush whose task was cancelled goes on in its thread: the next one must wait.
        self._write_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<TraceRecorder {self.directory} {len(self._tracks)} guests>"

    def _flush_every_s(self) -> float:
        # Read the histories before their oldest unread samples fall out of them.
        return min(FLUSH_EVERY_S, self.daemon.config.daemon.history_window_s / 2)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every few seconds until ``stop`` is set, then once more."""
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        log.info("recording guest traces in %s", self.directory)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_every_s()):
                        await stop.wait()
                await self.flush()
        finally:
            if stop.is_set():
                await self.flush()

    def collect(self) -> None:
        """Take the samples that arrived since the last call (cheap: runs in the loop)."""
        for name, ctrl in self.daemon.guests.items():
            boot = ctrl.link.boot_bytes
            if boot is None:
                continue
            track = self._tracks.setdefault(name, _Track())
            track.ram_bytes = boot
            for sample in ctrl.history:
                if sample.t_s <= track.last_t_s:
                    continue
                track.last_t_s = sample.t_s
                stats = sample.stats
                if stats is None or stats.available_bytes is None:
                    continue
                if stats.last_update == track.last_update:
                    continue  # the same guest report, read again
                track.last_update = stats.last_update
                used = max(0, sample.actual_bytes - stats.available_bytes)
                track.pending.append((sample.t_s, used, stats.disk_caches_bytes or 0))

    async def flush(self) -> None:
        """Write what :meth:`collect` gathered, in a worker thread."""
        self.collect()
        batch = {
            name: (track.ram_bytes, list(track.pending))
            for name, track in self._tracks.items()
            if track.pending
        }
        if not batch:
            return
        for name in batch:
            self._tracks[name].pending.clear()
        failed = await asyncio.to_thread(self._write_all, batch)
        for name, points in failed.items():
            # Back in front of anything newer, within the same bound.
            track = self._tracks[name]
            track.pending.extendleft(reversed(points[-MAX_PENDING_POINTS:]))

    def _write_all(self, batch: dict[str, tuple[int, list[Point]]]) -> dict[str, list[Point]]:
        with self._write_lock:
            return self._write_batch(batch)

    def _write_batch(self, batch: dict[str, tuple[int, list[Point]]]) -> dict[str, list[Point]]:
        failed: dict[str, list[Point]] = {}
        for name, (ram_bytes, points) in batch.items():
            try:
                self._write(name, ram_bytes, points)
            except OSError as exc:
                if not self._failing:
                    log.error("cannot write the trace of %s: %s", name, exc)
                self._failing = True
                failed[name] = points
            else:
                self._failing = False
        return failed

    def _write(self, name: str, ram_bytes: int, points: list[Point]) -> None:
        path = self.directory / f"{name}.json"
        state = self._files.get(name)
        if state is None:
            state = self._files[name] = self._resume(path)
        if state.origin_s is None:
            base = state.last_trace_t_s + 1.0 if state.exists else 0.0
            state.origin_s = points[0][0] - base
        lines = []
        for t_s, anon, cache in points:
            trace_t = round(t_s - state.origin_s, 3)
            if trace_t <= state.last_trace_t_s:
                continue
            state.last_trace_t_s = trace_t
            lines.append(_point_line(trace_t, anon, cache))
        if not lines:
            return
        body = ",\n".join(lines).encode()
        if state.exists:
            if self._append(path, body):
                return
            # Its end is not ours (edited, or cut short): keep it aside and start over.
            log.warning("%s does not end as written; moved to %s.old", path, path.name)
            os.replace(path, path.with_name(path.name + ".old"))
            self._files[name] = _File()
            self._write(name, ram_bytes, points)
            return
        head = {
            "format": FORMAT,
            "name": name,
            "description": DESCRIPTION,
            "ram_bytes": ram_bytes,
            "repeat": False,
        }
        text = json.dumps(head, indent=2)[:-2].encode() + b',\n  "points": [\n' + body + _TAIL
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(text)
        os.replace(tmp, path)
        state.exists = True

    @staticmethod
    def _append(path: Path, body: bytes) -> bool:
        """Add points before the closing brackets; False if the file does not end in them."""
        with path.open("r+b") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            if end < len(_TAIL):
                return False
            f.seek(end - len(_TAIL))
            if f.read() != _TAIL:
                return False
            f.seek(end - len(_TAIL))
            f.write(b",\n" + body + _TAIL)
        return True

    def _resume(self, path: Path) -> _File:
        """Where an existing file left off; an invalid one is moved aside."""
        if not path.exists():
            return _File()
        try:
            trace = Trace.load(path)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            log.warning("%s is not a trace (%s); moved to %s.old", path, exc, path.name)
            os.replace(path, path.with_name(path.name + ".old"))
            return _File()
        return _File(last_trace_t_s=trace.times_s[-1], exists=True)
