"""Host memory, read from /proc: the adapter behind :class:`balloond.core.stats.HostSnapshot`.

/proc/meminfo's MemAvailable is the kernel's own estimate of memory that can be used
without swapping; /proc/pressure/memory (PSI) says how much time tasks stalled on memory.
Both files are tiny and read in microseconds, so reading them every poll interval is fine.
"""

from __future__ import annotations

from pathlib import Path

from balloond.core.stats import HostSnapshot
from balloond.core.units import KiB

MEMINFO = Path("/proc/meminfo")
PRESSURE = Path("/proc/pressure/memory")


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` text -> {field: bytes} (the kernel prints kB, meaning KiB)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        value = int(parts[0])
        out[key.strip()] = value * KiB if len(parts) > 1 and parts[1] == "kB" else value
    return out


def parse_psi_some_avg10(text: str) -> float | None:
    """The ``some avg10=`` figure (percent) from a /proc/pressure file, None if absent."""
    for line in text.splitlines():
        if line.startswith("some "):
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


def read_host(*, meminfo: Path = MEMINFO, pressure: Path = PRESSURE) -> HostSnapshot:
    """A snapshot of host memory now. Raises OSError/ValueError if /proc is unreadable."""
    fields = parse_meminfo(meminfo.read_text())
    try:
        total = fields["MemTotal"]
        available = fields.get("MemAvailable", fields["MemFree"])
    except KeyError as exc:
        raise ValueError(f"{meminfo}: no {exc.args[0]} line") from None
    try:
        psi = parse_psi_some_avg10(pressure.read_text())
    except OSError:
        psi = None  # kernels without CONFIG_PSI, or PSI disabled at boot
    return HostSnapshot(total_bytes=total, available_bytes=available, psi_some_avg10=psi)
