"""Logging set-up for a terminal, for journald, or as JSON lines.

Under systemd (``JOURNAL_STREAM`` names stderr) lines carry no timestamp of their own, since
journald stamps them, and start with a syslog priority prefix (``<4>``) so that
``journalctl -p warning`` works. On a terminal lines are short and readable. ``json``
gives one object per line for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Literal

LogFormat = Literal["auto", "text", "journal", "json"]

_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    """``<prio>logger: message`` with no timestamp (journald adds its own)."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelno, 6)
        text = f"<{prio}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info).replace("\n", f"\n<{prio}>")
        return text


class TextFormatter(logging.Formatter):
    """``12:34:56 INFO    logger: message``. The time of day is formatted once a second:
    ``time.localtime`` checks the time zone file on every call, and a busy daemon writes
    hundreds of lines a second."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._stamp = super().formatTime(record, datefmt)
        return self._stamp


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exc when present)."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj)


def stderr_is_journal(env: Mapping[str, str] | None = None) -> bool:
    """True if stderr is the journal stream systemd connected (``JOURNAL_STREAM=dev:ino``).

    Comparing device and inode, as systemd.exec(5) advises, keeps a child that
    inherited the variable but writes to a terminal or a pipe on the text format.
    """
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def resolve_format(fmt: LogFormat) -> Literal["text", "journal", "json"]:
    if fmt != "auto":
        return fmt
    return "journal" if stderr_is_journal() else "text"


def setup_logging(fmt: LogFormat = "auto", *, level: int = logging.INFO) -> None:
    """Configure the root logger once for the whole process (replacing earlier set-up)."""
    handler = logging.StreamHandler(sys.stderr)
    kind = resolve_format(fmt)
    if kind == "journal":
        handler.setFormatter(JournalFormatter())
    elif kind == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    # No format here names the process or thread: do not look them up for every record
    # (on 3.11 the process id is a system call each time, and a busy daemon logs a lot).
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    # Nor where each call was made from (no format shows it): the logging HOWTO's
    # "Optimization" section documents this switch.
    logging._srcfile = None
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # qemu.qmp logs each refused connect at ERROR; balloond reports link trouble itself.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
