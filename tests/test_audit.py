"""The audit log, written in the daemon's I/O thread: in order, never holding the caller."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from balloond.adapters.audit_log import AuditLog


def test_lines_go_out_in_order_and_close_waits_for_them(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.jsonl"
    io = ThreadPoolExecutor(max_workers=1)
    audit = AuditLog(path, executor=io)
    records = [audit.write({"guest": "g", "n": n}) for n in range(1000)]
    audit.close()
    io.shutdown(wait=True)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["n"] for r in lines] == list(range(1000))
    assert lines == records  # what write() returned is what was written


def test_a_slow_disk_does_not_hold_the_writer(tmp_path: Path) -> None:
    io = ThreadPoolExecutor(max_workers=1)
    disk_busy = threading.Event()
    io.submit(disk_busy.wait, 60)  # the I/O thread is stuck on something slow
    audit = AuditLog(tmp_path / "audit.jsonl", executor=io)
    try:
        for n in range(100):
            audit.write({"guest": "g", "n": n})  # returns at once, queued behind it
        assert not (tmp_path / "audit.jsonl").exists()
    finally:
        disk_busy.set()
        audit.close()
        io.shutdown(wait=True)
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 100


def test_without_a_path_nothing_is_written(tmp_path: Path) -> None:
    audit = AuditLog(None)
    assert audit.write({"guest": "g"})["guest"] == "g"
    audit.close()
    assert not list(tmp_path.iterdir())
