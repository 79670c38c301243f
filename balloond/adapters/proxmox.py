"""Proxmox VE's guests: its own QMP sockets, named and bounded by its VM configs.

Proxmox keeps one QMP socket per running VM, ``/var/run/qemu-server/<vmid>.qmp``, used by
``qm`` and pvestatd, and each VM's config in ``/etc/pve/qemu-server/<vmid>.conf``. balloond
reaches the socket the shared way (connected for a few milliseconds per cycle), so nothing
needs a second ``-qmp`` or a restart. From the config (its first section, before any
``[snapshot]``):

* ``name:`` names the guest (the VMID when there is none);
* ``memory:`` (MiB, or ``current=MiB``) is its maximum, ``balloon:`` (MiB) its minimum,
  as in Proxmox's own auto-ballooning; without ``balloon:`` the minimum is the memory
  (Proxmox's "no minimum set": the VM keeps its size);
* ``balloon: 0`` turns the balloon device off: such a VM is left alone.

A VM whose config cannot be read or makes no sense is left alone with one warning.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from balloond.adapters.discovery import GuestSpec, Way, is_socket
from balloond.core.units import MiB

log = logging.getLogger("balloond.adapters.proxmox")

_VMID = re.compile(r"^[1-9][0-9]{2,8}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:@+-]")
#: Warned about once each (a config that stays broken must not fill the journal).
_warned: set[tuple[str, str]] = set()


def _warn_once(vmid: str, text: str, level: int = logging.WARNING) -> None:
    if (vmid, text) not in _warned:
        _warned.add((vmid, text))
        log.log(level, "proxmox VM %s: %s", vmid, text)


def read_vm_config(text: str) -> dict[str, str]:
    """The keys of a ``qemu-server/<vmid>.conf``'s current section (snapshots left out)."""
    keys: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            break  # [snapshot] sections and the like: not the running config
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if sep:
            keys[key.strip()] = value.strip()
    return keys


def _mib(value: str, key: str) -> int:
    """A MiB count as Proxmox writes it (``2048``, or ``current=2048`` for ``memory``)."""
    for part in value.split(","):
        number = part.strip().removeprefix("current=")
        if number.isdigit():
            return int(number)
    raise ValueError(f"{key}: {value!r} is not a size in MiB")


def vm_spec(vmid: str, socket: Path, config: dict[str, str]) -> GuestSpec | None:
    """The guest for one VM, or None when balloond must leave it alone (``balloon: 0``).

    Raises ValueError for a config that makes no sense."""
    name = _UNSAFE.sub("_", config.get("name", "")) or vmid
    max_bytes = _mib(config["memory"], "memory") * MiB if "memory" in config else None
    if "balloon" in config:
        balloon = _mib(config["balloon"], "balloon")
        if balloon == 0:
            return None
        min_bytes: int | None = balloon * MiB
    else:
        min_bytes = max_bytes
    if min_bytes is not None and max_bytes is not None and min_bytes > max_bytes:
        raise ValueError(f"balloon ({min_bytes // MiB} MiB) above memory ({max_bytes // MiB} MiB)")
    return GuestSpec(
        name=name,
        way=Way.QMP_SHARED,
        address=str(socket),
        source="proxmox",
        min_bytes=min_bytes,
        max_bytes=max_bytes,
    )


def proxmox_guests(*, config_dir: Path, run_dir: Path) -> list[GuestSpec]:
    """The running VMs (a ``<vmid>.qmp`` socket in ``run_dir``) that balloond may manage."""
    specs: list[GuestSpec] = []
    names: dict[str, str] = {}
    for socket in sorted(run_dir.glob("*.qmp")):
        vmid = socket.stem
        if not _VMID.match(vmid) or not is_socket(socket):
            continue
        conf = config_dir / f"{vmid}.conf"
        try:
            spec = vm_spec(vmid, socket, read_vm_config(conf.read_text(errors="replace")))
        except OSError as exc:
            _warn_once(vmid, f"cannot read {conf}: {exc.strerror or exc}; left alone")
            continue
        except ValueError as exc:
            _warn_once(vmid, f"{conf}: {exc}; left alone")
            continue
        if spec is None:
            _warn_once(vmid, "balloon: 0 (ballooning off); left alone", logging.INFO)
            continue
        if spec.name in names:
            # Two VMs with one name: both keep their VMIDs, so neither hides the other.
            first = names[spec.name]
            _warn_once(vmid, f"name {spec.name!r} is also VM {first}'s; named {vmid}")
            spec = dataclasses.replace(spec, name=vmid)
        names[spec.name] = vmid
        specs.append(spec)
    return specs
