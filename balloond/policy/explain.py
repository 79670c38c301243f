"""How decisions read to people: MiB and percent of the guest's boot memory.

Decisions are explained in one line each (logs, ``balloonctl explain``). The formatting lives
here so the engine's logic reads as logic.
"""

from __future__ import annotations

from balloond.units import GiB, MiB


def size(n_bytes: int) -> str:
    """``'512MiB'``, ``'1GiB'``, ``'1.5GiB'``, ``'12.3GiB'``; whole MiB below 10GiB otherwise.

    (``units.fmt_size`` prints 1GiB as "1024MiB": it tests divisibility by a rounded tenth.)
    """
    sign, n = ("-", -n_bytes) if n_bytes < 0 else ("", n_bytes)
    if n >= GiB and ((n * 10) % GiB == 0 or n >= 10 * GiB):
        return f"{sign}{n / GiB:.1f}".removesuffix(".0") + "GiB"
    if n >= MiB or n == 0:
        return f"{sign}{n / MiB:.0f}MiB"
    return f"{sign}{n / 1024:.0f}KiB"


def size_pct(n_bytes: int, whole_bytes: int) -> str:
    """``'77MiB (15%)'``: an amount and its share of ``whole_bytes`` (the guest's boot RAM)."""
    if whole_bytes <= 0:
        return size(n_bytes)
    return f"{size(n_bytes)} ({100 * n_bytes / whole_bytes:.0f}%)"


def rate(bytes_per_s: float) -> str:
    """``'40MiB/s'``."""
    return f"{size(round(bytes_per_s))}/s"


def move(current_bytes: int, target_bytes: int) -> str:
    """``'deflate 512MiB -> 760MiB'`` or ``'inflate 1GiB -> 896MiB'``."""
    verb = "deflate" if target_bytes > current_bytes else "inflate"
    return f"{verb} {size(current_bytes)} -> {size(target_bytes)}"
