"""Which guests exist, and how each is reached: a :class:`GuestSpec` per guest.

Sources, merged in this order (the first to claim a name keeps it):

* ``[[guests]]`` entries from the config name a guest and its QMP socket by hand;
* ``[discovery] globs`` match QMP sockets of balloond's own (QEMU serves one client per
  socket: e.g. ``-qmp unix:/run/balloond-qmp/<vmid>.qmp``), named by the file stem;
* ``[discovery] shared_globs`` match QMP sockets other clients use too: balloond connects
  for each cycle only (:class:`~balloond.adapters.qmp.SharedQmpLink`);
* ``[proxmox]``: Proxmox VE's own sockets, named and bounded by its VM configs
  (:func:`balloond.adapters.proxmox.proxmox_guests`);
* ``[libvirt]``: domains a libvirt daemon runs, followed through its events
  (:mod:`balloond.adapters.libvirt`).

The file sources are rescanned while the daemon runs, so guests can come and go.
"""

from __future__ import annotations

import enum
import glob
import logging
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from balloond.core.link import GuestLink

log = logging.getLogger("balloond.adapters.discovery")

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+-]")


class Way(enum.Enum):
    """How balloond reaches a guest."""

    QMP = "qmp"  # a QMP socket of balloond's own, held open
    QMP_SHARED = "qmp-shared"  # a QMP socket shared with other clients, held per cycle
    LIBVIRT = "libvirt"  # through a libvirt daemon


@dataclass(frozen=True, slots=True)
class GuestSpec:
    """One guest as a source found it.

    ``address`` is where it is reached: a socket path, or for libvirt the URI and the
    domain's name. ``min_bytes``/``max_bytes``: bounds the source sets for this one guest
    (Proxmox's ``balloon:``/``memory:``, a libvirt domain's balloond metadata); they
    replace the policy's ``min_size``/``max_size``. ``policy``: a policy the source names
    (libvirt metadata), used unless an operator chose another.
    """

    name: str
    way: Way
    address: str
    source: str
    min_bytes: int | None = None
    max_bytes: int | None = None
    policy: str | None = None

    def same_link(self, other: GuestSpec) -> bool:
        """Whether ``other`` is reached the same way at the same place (bounds aside)."""
        return (self.way, self.address) == (other.way, other.address)


class GuestSource(Protocol):
    """A source that follows its guests itself (a libvirt connection): the daemon runs
    it, asks it for its guests at each rescan, and for a link to each."""

    def specs(self) -> list[GuestSpec]: ...

    def owns(self, spec: GuestSpec) -> bool: ...

    def link(self, spec: GuestSpec) -> GuestLink: ...


def name_from_path(path: Path) -> str:
    """A guest name from a socket path: its stem, with odd characters replaced by '_'."""
    return _UNSAFE.sub("_", path.stem) or "_"


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


#: pattern -> (its directory's mtime, the sockets it matched then). A rescan of a
#: directory in which nothing was created or removed costs one stat, not one per guest.
_GLOB_CACHE: dict[str, tuple[int, list[Path]]] = {}
#: A directory changed this recently is globbed again anyway: a file system with coarse
#: timestamps could show the same mtime before and after a change within one tick.
_SETTLED_NS = 2_000_000_000


def _sockets(pattern: str) -> list[Path]:
    """The unix sockets ``pattern`` matches, sorted."""
    directory = os.path.dirname(pattern)
    mtime: int | None = None
    if not glob.has_magic(directory):
        try:
            mtime = os.stat(directory).st_mtime_ns
        except OSError:
            return []
        cached = _GLOB_CACHE.get(pattern)
        settled = time.time_ns() - mtime > _SETTLED_NS
        if cached is not None and cached[0] == mtime and settled:
            return cached[1]
    found = [path for match in sorted(glob.glob(pattern)) if is_socket(path := Path(match))]
    if mtime is not None:
        _GLOB_CACHE[pattern] = (mtime, found)
    return found


def discover(
    *,
    static: Iterable[GuestSpec],
    globs: Iterable[str],
    shared_globs: Iterable[str] = (),
    found: Iterable[Iterable[GuestSpec]] = (),
) -> dict[str, GuestSpec]:
    """Guest name -> spec.

    Static entries are always present (a guest that is down shows as disconnected). Glob
    matches must be unix sockets. ``found`` holds other sources' guests (Proxmox,
    libvirt). A name already taken by an earlier source is skipped with a warning.
    """
    specs: dict[str, GuestSpec] = {spec.name: spec for spec in static}

    def add(spec: GuestSpec) -> None:
        taken = specs.get(spec.name)
        if taken is None:
            specs[spec.name] = spec
        elif not taken.same_link(spec):
            log.warning(
                "%s: guest name %r is already used by %s", spec.address, spec.name, taken.address
            )

    for patterns, way in ((globs, Way.QMP), (shared_globs, Way.QMP_SHARED)):
        for pattern in patterns:
            for path in _sockets(pattern):
                add(GuestSpec(name_from_path(path), way, str(path), source="glob"))
    for source in found:
        for spec in source:
            add(spec)
    return specs
