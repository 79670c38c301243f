"""How decisions read to people: MiB and percent of the guest's boot memory.

Decisions are explained in one line each (logs, ``balloonctl explain``). The formatting lives
here so the engine's logic reads as logic.
"""

from __future__ import annotations

from balloond.core.units import fmt_size

#: ``'512MiB'``, ``'1GiB'``, ``'1.5GiB'``: the one size formatter, under the name the
#: engine's explanations use.
size = fmt_size


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
