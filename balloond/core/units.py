"""Sizes and percentages at the edges.

Inside balloond every amount of memory is an ``int`` of bytes. People write "512MiB",
"2GiB" or "10%", and read MiB. These helpers convert, once, where text meets numbers.
"""

from __future__ import annotations

import re

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": 1000,
    "kib": KiB,
    "m": MiB,
    "mb": 1000**2,
    "mib": MiB,
    "g": GiB,
    "gb": 1000**3,
    "gib": GiB,
    "t": TiB,
    "tb": 1000**4,
    "tib": TiB,
}
# Spelled out rather than \s and \d, so that these mean the same to Python and to a JSON
# Schema validator (ECMA-262 regular expressions): ASCII digits and white space only.
_WS = r"[ \t\n\r\f\v]*"
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_SIZE_RE = re.compile(rf"^{_WS}({_NUMBER}){_WS}([a-zA-Z]*){_WS}$")
_PCT_RE = re.compile(rf"^{_WS}({_NUMBER}){_WS}%{_WS}$")


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" for c in word)


#: What :func:`parse_size` accepts, as a regular expression in the subset JSON Schema and
#: Python share (no inline flags): the config schema's pattern is made from the same units,
#: so an editor never accepts a size the loader refuses. Longest units first.
SIZE_PATTERN = (
    rf"^{_WS}{_NUMBER}{_WS}(?:"
    + "|".join(_any_case(u) for u in sorted(_UNITS, key=len, reverse=True) if u)
    + rf")?{_WS}$"
)
#: What :func:`parse_percent` accepts (its 0..100 range aside).
PERCENT_PATTERN = rf"^{_WS}{_NUMBER}{_WS}%{_WS}$"

#: Anything larger is a typo, not a guest (QEMU caps guest RAM far below this).
MAX_SIZE_BYTES = 1 << 50


def parse_size(text: str) -> int:
    """Parse ``"512MiB"``, ``"2G"``, ``"1.5GiB"`` or ``"1048576"`` into bytes.

    Binary units (KiB, MiB...) and their one-letter forms are powers of 1024; KB, MB, GB
    are powers of 1000. A bare number is bytes. Raises ValueError naming the problem.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (expected e.g. '512MiB', '2GiB')")
    number, unit = m.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} in {text!r} (use B, KiB, MiB, GiB or TiB)")
    value = int(float(number) * factor)
    if value > MAX_SIZE_BYTES:
        raise ValueError(f"size {text!r} is implausibly large")
    return value


def parse_percent(text: str) -> float:
    """Parse ``"10%"`` into ``10.0``; raises ValueError unless 0 <= value <= 100."""
    m = _PCT_RE.match(text)
    if not m:
        raise ValueError(f"not a percentage: {text!r} (expected e.g. '10%')")
    value = float(m.group(1))
    if value > 100:
        raise ValueError(f"percentage {text!r} is above 100%")
    return value


def to_mib(n_bytes: int | None) -> float | None:
    """Bytes to MiB for display (None stays None)."""
    return None if n_bytes is None else n_bytes / MiB


def fmt_size(n_bytes: int | None) -> str:
    """Bytes as people read them, the one size formatter for logs, explanations and status:
    ``'512MiB'``; ``'1GiB'`` and ``'1.5GiB'`` when a tenth of a GiB is exact, otherwise
    whole MiB below 10 GiB and ``'12.3GiB'`` above; KiB and bytes below a MiB; ``'-'`` for
    None."""
    if n_bytes is None:
        return "-"
    sign, n = ("-", -n_bytes) if n_bytes < 0 else ("", n_bytes)
    if n >= GiB and ((n * 10) % GiB == 0 or n >= 10 * GiB):
        return f"{sign}{n / GiB:.1f}".removesuffix(".0") + "GiB"
    if n >= MiB or n == 0:
        return f"{sign}{n / MiB:.0f}MiB"
    if n >= KiB:
        return f"{sign}{n / KiB:.0f}KiB"
    return f"{sign}{n}B"


def fmt_mib(n_bytes: int | None) -> str:
    """A table cell in MiB, the number alone (``'512'``); ``'-'`` for None."""
    return "-" if n_bytes is None else f"{n_bytes / MiB:.0f}"


#: The longest hold an operator may set (a year and a day).
MAX_HOLD_S = 366 * 24 * 3600.0

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str | float) -> float:
    """``"90"``, ``"10m"``, ``"2h"``, ``"1d"`` or a number -> seconds (> 0)."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or e.g. '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"not a duration: {value!r} (expected e.g. '90', '10m', '2h')")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not 0 < seconds <= MAX_HOLD_S:
        raise ValueError(f"duration must be between 0 and {MAX_HOLD_S:.0f} seconds")
    return seconds
