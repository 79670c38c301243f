"""What an offline replay runs: guests with their workloads, a host, a duration.

A :class:`Scenario` is plain frozen data, so the same one can be handed to every controller
under comparison. :func:`load_traces` turns trace files into guests and is where a bad file
becomes a :class:`~balloond.core.errors.TraceError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from balloond.core.errors import TraceError
from balloond.core.units import GiB, MiB
from balloond.replay.model import PAGE_BYTES
from balloond.replay.traces import Trace

#: Guest RAM for a trace that does not say what size it was made for.
DEFAULT_GUEST_BYTES = 1 * GiB
#: Host memory each QEMU process uses beyond its guest's RAM (device model, page tables,
#: I/O buffers): a few tens of MiB for a small guest.
QEMU_OVERHEAD_BYTES = 48 * MiB
#: Host memory the host's own kernel and services use.
HOST_SYSTEM_BYTES = 512 * MiB


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestSpec:
    """One simulated guest: its name, RAM at boot and workload."""

    name: str
    ram_bytes: int
    trace: Trace
    deflate_on_oom: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpec:
    """The host the guests share. Its free memory is ``total - system - sum(actual +
    overhead)``: a guest's RAM counts at its balloon size (``actual``), as if every page it
    has were in use, which is how a host ends up once its guests have run for a while."""

    total_bytes: int
    qemu_overhead_bytes: int = QEMU_OVERHEAD_BYTES
    system_bytes: int = HOST_SYSTEM_BYTES

    def free_bytes(self, actual_total_bytes: int, n_guests: int) -> int:
        """Host memory left with the guests at these sizes; negative when over-committed."""
        used = self.system_bytes + actual_total_bytes + n_guests * self.qemu_overhead_bytes
        return self.total_bytes - used


def overcommitted_host(guests: Sequence[GuestSpec], *, share: float) -> HostSpec:
    """A host whose RAM holds its own use, each QEMU's overhead and ``share`` of the
    guests' boot memory: below 1, the guests cannot all have their boot memory at once."""
    base = HostSpec(total_bytes=0)
    boot = sum(g.ram_bytes for g in guests)
    total = base.system_bytes + len(guests) * base.qemu_overhead_bytes + int(boot * share)
    return HostSpec(total_bytes=total - total % PAGE_BYTES)


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """Guests on a host for ``duration_s`` of virtual time, stepped every ``tick_s``.

    ``stats_interval_s`` is the guests' balloon statistics period (QEMU's
    guest-stats-polling-interval), whole seconds as QEMU takes it.
    """

    guests: tuple[GuestSpec, ...]
    host: HostSpec
    duration_s: float
    tick_s: float = 0.25
    stats_interval_s: int = 1

    def __post_init__(self) -> None:
        if not self.guests:
            raise ValueError("a scenario needs at least one guest")
        names = [g.name for g in self.guests]
        if len(set(names)) != len(names):
            raise ValueError("guest names must be unique")
        if not self.duration_s > 0 or not self.tick_s > 0:
            raise ValueError("duration_s and tick_s must be positive")
        if self.stats_interval_s < 1:
            raise ValueError("stats_interval_s must be at least 1")
        if self.host.free_bytes(0, len(self.guests)) <= 0:
            raise ValueError(
                f"host memory {self.host.total_bytes >> 20} MiB does not even hold the host's "
                f"own {self.host.system_bytes >> 20} MiB and {len(self.guests)} QEMU processes"
            )

    @property
    def boot_total_bytes(self) -> int:
        return sum(g.ram_bytes for g in self.guests)


def _guest_bytes(trace: Trace) -> int:
    ram = trace.ram_bytes if trace.ram_bytes is not None else DEFAULT_GUEST_BYTES
    return ram - ram % PAGE_BYTES


def load_traces(paths: Sequence[Path]) -> tuple[GuestSpec, ...]:
    """One guest per trace file, named after the file (``web.json`` -> ``web``, a second
    ``web.json`` -> ``web-2``), with the RAM the trace was made for (1 GiB if it does not
    say). Raises TraceError naming the file and the problem."""
    guests: list[GuestSpec] = []
    seen: dict[str, int] = {}
    for path in paths:
        try:
            trace = Trace.load(path)
        except FileNotFoundError:
            raise TraceError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TraceError(f"{path}: cannot read: {exc}") from exc
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            # Trace.load prefixes the path to its own messages; add it where missing.
            text = str(exc)
            raise TraceError(text if text.startswith(str(path)) else f"{path}: {text}") from exc
        ram = _guest_bytes(trace)
        if ram < 64 * MiB:
            raise TraceError(f"{path}: ram_bytes {ram} is below 64 MiB: not a guest size")
        stem = path.stem or "guest"
        seen[stem] = seen.get(stem, 0) + 1
        name = stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"
        guests.append(GuestSpec(name=name, ram_bytes=ram, trace=trace))
    return tuple(guests)
