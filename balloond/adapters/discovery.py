"""Which guests exist: static entries from the config plus globs over QMP socket paths.

Hosts keep a QMP socket per VM in one directory (balloond wants sockets of its own, since
QEMU serves one client per socket: e.g. /run/balloond-qmp/<vmid>.qmp). A glob finds them,
named by the file stem; static entries name a guest explicitly. Discovery is rescanned
while the daemon runs, so guests can come and go.
"""

from __future__ import annotations

import glob
import logging
import re
import stat
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger("balloond.adapters.discovery")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+-]")


def name_from_path(path: Path) -> str:
    """A guest name from a socket path: its stem, with odd characters replaced by '_'."""
    return _UNSAFE.sub("_", path.stem) or "_"


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def discover(*, static: Iterable[tuple[str, Path]], globs: Iterable[str]) -> dict[str, Path]:
    """Guest name -> QMP socket path.

    Static entries are always present (a guest that is down shows as disconnected). Glob
    matches must be unix sockets; a glob match whose name is taken by a static entry or an
    earlier match is skipped with a warning.
    """
    found: dict[str, Path] = dict(static)
    for pattern in globs:
        for match in sorted(glob.glob(pattern)):
            path = Path(match)
            if not _is_socket(path):
                continue
            name = name_from_path(path)
            if name in found:
                if found[name] != path:
                    log.warning("%s: guest name %r is already used by %s", path, name, found[name])
                continue
            found[name] = path
    return found
