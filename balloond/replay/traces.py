"""Workload traces: how much memory a simulated guest's programs want, over time.

A simulated guest needs a workload to make its balloon matter. A trace gives two demands,
sampled at time points and linearly interpolated between them:

* ``anon_bytes``: anonymous memory the programs want resident (heaps, stacks). With no swap
  it cannot be reclaimed; if it does not fit, the guest's OOM killer ends a process.
* ``cache_bytes``: page cache the programs would like to keep. It is reclaimable: the guest
  shrinks it when memory is tight.
* ``hot_cache_bytes`` (optional, at most ``cache_bytes``; all of it when absent): the part
  of that cache the workload keeps touching, its file working set. Squeezed out, it is read
  again from disk (refaults); the rest (a file streamed once, old logs) costs nothing to drop.

Two rates belong to the whole trace: ``cache_touch_per_s``, the share of the hot cache the
workload reads each second (a database touches its buffer often, a build server its headers
now and then), and ``read_bytes_per_s``, new data read from disk each second whatever the
balloon does (a stream).

Traces are plain data, so the QMP server (wall-clock time) and an offline simulator (virtual
time) replay the same workload.

JSON format (``balloond-trace/1``)::

    {
      "format": "balloond-trace/1",
      "name": "bursty",                    # optional, for humans and logs
      "description": "...",                # optional
      "ram_bytes": 1073741824,             # optional: the guest size the amounts were made for;
                                           #   Trace.scaled() rescales them to another size
      "repeat": true,                      # optional, default false: after the last point the
                                           #   trace starts over (period = last t_s); without
                                           #   repeat the last values hold forever
      "start_s": 0,                        # optional: the guest boots this far into the trace
      "cache_touch_per_s": 0.02,           # optional: share of the hot cache read per second
      "read_bytes_per_s": 0,               # optional: new data read from disk per second
      "points": [                          # t_s strictly increasing, the first one 0
        {"t_s": 0, "anon_bytes": 268435456, "cache_bytes": 134217728},
        {"t_s": 30.5, "anon_bytes": "512MiB", "cache_bytes": "64MiB",
         "hot_cache_bytes": "16MiB"}
      ]
    }

Amounts are integers of bytes or size strings (``"512MiB"``, see :mod:`balloond.core.units`);
times are seconds from the guest's boot. The generators below (:data:`GENERATORS`) build
synthetic traces sized relative to a guest's RAM; :func:`by_name` turns a generator name or a
JSON file path into a trace, which is what the CLI accepts.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balloond.core.units import MiB, parse_size

FORMAT = "balloond-trace/1"

#: Where the example traces shipped with the package live.
EXAMPLES_DIR = Path(__file__).with_name("examples")


@dataclass(frozen=True, slots=True)
class Trace:
    """Anonymous and page-cache demand over time, linearly interpolated.

    ``times_s`` is strictly increasing and starts at 0; ``anon_bytes`` and ``cache_bytes``
    hold the demand at each time.
    """

    times_s: tuple[float, ...]
    anon_bytes: tuple[int, ...]
    cache_bytes: tuple[int, ...]
    #: The part of the cache the workload keeps touching; None: all of it.
    hot_cache_bytes: tuple[int, ...] | None = None
    #: Share of the hot cache read each second; None: the guest model's default.
    cache_touch_per_s: float | None = None
    #: New data read from disk each second, whatever the balloon does (a stream).
    read_bytes_per_s: int = 0
    repeat: bool = False
    name: str = ""
    description: str = ""
    ram_bytes: int | None = None
    #: Where in the trace the guest starts (``shifted``): trace time = time + start_s.
    start_s: float = 0.0
    _period_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.times_s)
        if n == 0 or len(self.anon_bytes) != n or len(self.cache_bytes) != n:
            raise ValueError("a trace needs at least one point, each with anon and cache")
        if self.times_s[0] != 0:
            raise ValueError(f"a trace starts at t_s=0, not {self.times_s[0]}")
        for a, b in zip(self.times_s, self.times_s[1:], strict=False):
            if not b > a:
                raise ValueError(f"trace times must increase strictly ({a} then {b})")
        if any(v < 0 for v in self.anon_bytes) or any(v < 0 for v in self.cache_bytes):
            raise ValueError("trace amounts must not be negative")
        if self.hot_cache_bytes is not None:
            if len(self.hot_cache_bytes) != n:
                raise ValueError("hot_cache_bytes needs one value per point")
            pairs = zip(self.hot_cache_bytes, self.cache_bytes, strict=True)
            for i, (hot, cache) in enumerate(pairs):
                if not 0 <= hot <= cache:
                    raise ValueError(f"points[{i}]: hot_cache_bytes must be 0..cache_bytes")
        touch = self.cache_touch_per_s
        if touch is not None and not (math.isfinite(touch) and 0 <= touch <= 1):
            raise ValueError("cache_touch_per_s must be between 0 and 1")
        if self.read_bytes_per_s < 0:
            raise ValueError("read_bytes_per_s must not be negative")
        if any(not math.isfinite(t) for t in self.times_s):
            raise ValueError("trace times must be finite")
        object.__setattr__(self, "_period_s", self.times_s[-1])

    @property
    def duration_s(self) -> float:
        """Time of the last point (the period when the trace repeats)."""
        return self._period_s

    def _local(self, t_s: float) -> float:
        t_s += self.start_s
        if t_s <= 0:
            return 0.0
        if self.repeat and self._period_s > 0:
            return t_s % self._period_s
        return min(t_s, self._period_s)

    def at(self, t_s: float) -> tuple[int, int]:
        """``(anon_bytes, cache_bytes)`` wanted at ``t_s`` seconds after boot."""
        x = self._local(t_s)
        i = bisect.bisect_right(self.times_s, x) - 1
        if i >= len(self.times_s) - 1:
            return self.anon_bytes[-1], self.cache_bytes[-1]
        t0, t1 = self.times_s[i], self.times_s[i + 1]
        f = (x - t0) / (t1 - t0)
        anon = self.anon_bytes[i] + (self.anon_bytes[i + 1] - self.anon_bytes[i]) * f
        cache = self.cache_bytes[i] + (self.cache_bytes[i + 1] - self.cache_bytes[i]) * f
        return int(anon), int(cache)

    def hot_at(self, t_s: float) -> int:
        """The hot part of the cache wanted at ``t_s`` (all of it for a trace without)."""
        hot = self.hot_cache_bytes
        if hot is None:
            return self.at(t_s)[1]
        x = self._local(t_s)
        i = bisect.bisect_right(self.times_s, x) - 1
        if i >= len(self.times_s) - 1:
            return hot[-1]
        t0, t1 = self.times_s[i], self.times_s[i + 1]
        return int(hot[i] + (hot[i + 1] - hot[i]) * (x - t0) / (t1 - t0))

    def next_point_after(self, t_s: float) -> float | None:
        """The first time strictly after ``t_s`` at which a point lies, or None.

        The model ends its integration steps on points so it never steps over a peak.
        """
        nxt = self._next_point(t_s + self.start_s)
        return None if nxt is None else nxt - self.start_s

    def _next_point(self, t_s: float) -> float | None:
        if self._period_s == 0:
            return None
        if not self.repeat:
            if t_s >= self._period_s:
                return None
            i = bisect.bisect_right(self.times_s, max(t_s, 0.0))
            return self.times_s[i] if t_s >= 0 else 0.0
        base = math.floor(max(t_s, 0.0) / self._period_s) * self._period_s
        x = max(t_s, 0.0) - base
        i = bisect.bisect_right(self.times_s, x)
        nxt = base + (self.times_s[i] if i < len(self.times_s) else self._period_s)
        return nxt if nxt > t_s else nxt + self._period_s

    # --- transformations ---------------------------------------------------------------

    def scaled(self, ram_bytes: int) -> Trace:
        """The same shape for a guest of ``ram_bytes`` (needs ``self.ram_bytes``)."""
        if self.ram_bytes is None or self.ram_bytes == ram_bytes:
            return self
        f = ram_bytes / self.ram_bytes
        hot = self.hot_cache_bytes
        return _replace(
            self,
            anon_bytes=tuple(int(v * f) for v in self.anon_bytes),
            cache_bytes=tuple(int(v * f) for v in self.cache_bytes),
            hot_cache_bytes=None if hot is None else tuple(int(v * f) for v in hot),
            read_bytes_per_s=int(self.read_bytes_per_s * f),
            ram_bytes=ram_bytes,
        )

    def stretched(self, factor: float) -> Trace:
        """Time multiplied by ``factor`` (0.01 plays a day-long trace in under 15 minutes)."""
        if not factor > 0:
            raise ValueError("stretch factor must be positive")
        return _replace(
            self, times_s=tuple(t * factor for t in self.times_s), start_s=self.start_s * factor
        )

    def shifted(self, offset_s: float) -> Trace:
        """The same trace started ``offset_s`` seconds in, so a fleet is not in lock step."""
        if offset_s < 0:
            raise ValueError("a trace can only be started later, not earlier")
        return _replace(self, start_s=self.start_s + offset_s)

    # --- JSON --------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The ``balloond-trace/1`` document for this trace."""
        doc: dict[str, Any] = {"format": FORMAT}
        if self.name:
            doc["name"] = self.name
        if self.description:
            doc["description"] = self.description
        if self.ram_bytes is not None:
            doc["ram_bytes"] = self.ram_bytes
        doc["repeat"] = self.repeat
        if self.start_s:
            doc["start_s"] = self.start_s
        if self.cache_touch_per_s is not None:
            doc["cache_touch_per_s"] = self.cache_touch_per_s
        if self.read_bytes_per_s:
            doc["read_bytes_per_s"] = self.read_bytes_per_s
        points: list[dict[str, Any]] = [
            {"t_s": _num(t), "anon_bytes": a, "cache_bytes": c}
            for t, a, c in zip(self.times_s, self.anon_bytes, self.cache_bytes, strict=True)
        ]
        if self.hot_cache_bytes is not None:
            for point, hot in zip(points, self.hot_cache_bytes, strict=True):
                point["hot_cache_bytes"] = hot
        doc["points"] = points
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Trace:
        """Parse a ``balloond-trace/1`` document; ValueError names what is wrong."""
        if not isinstance(doc, Mapping):
            raise ValueError("a trace document is a JSON object")
        fmt = doc.get("format", FORMAT)
        if fmt != FORMAT:
            raise ValueError(f"unknown trace format {fmt!r} (expected {FORMAT!r})")
        points = doc.get("points")
        if not isinstance(points, list) or not points:
            raise ValueError("'points' must be a non-empty list")
        times: list[float] = []
        anon: list[int] = []
        cache: list[int] = []
        hot: list[int] = []
        for i, p in enumerate(points):
            if not isinstance(p, Mapping):
                raise ValueError(f"points[{i}] is not an object")
            t = p.get("t_s")
            if not isinstance(t, int | float) or isinstance(t, bool):
                raise ValueError(f"points[{i}].t_s is not a number")
            times.append(float(t))
            anon.append(_amount(p.get("anon_bytes", 0), f"points[{i}].anon_bytes"))
            cache.append(_amount(p.get("cache_bytes", 0), f"points[{i}].cache_bytes"))
            if "hot_cache_bytes" in p:
                hot.append(_amount(p["hot_cache_bytes"], f"points[{i}].hot_cache_bytes"))
        if hot and len(hot) != len(points):
            raise ValueError("hot_cache_bytes must be given on every point or on none")
        touch = doc.get("cache_touch_per_s")
        if touch is not None and (not isinstance(touch, int | float) or isinstance(touch, bool)):
            raise ValueError("'cache_touch_per_s' must be a number")
        reads = _amount(doc.get("read_bytes_per_s", 0), "read_bytes_per_s")
        ram = doc.get("ram_bytes")
        repeat = doc.get("repeat", False)
        if not isinstance(repeat, bool):
            raise ValueError("'repeat' must be true or false")
        start = doc.get("start_s", 0.0)
        if not isinstance(start, int | float) or isinstance(start, bool) or start < 0:
            raise ValueError("'start_s' must be a non-negative number")
        return cls(
            times_s=tuple(times),
            anon_bytes=tuple(anon),
            cache_bytes=tuple(cache),
            hot_cache_bytes=tuple(hot) if hot else None,
            cache_touch_per_s=None if touch is None else float(touch),
            read_bytes_per_s=reads,
            repeat=repeat,
            name=str(doc.get("name", "")),
            description=str(doc.get("description", "")),
            ram_bytes=None if ram is None else _amount(ram, "ram_bytes"),
            start_s=float(start),
        )

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace from a JSON file."""
        with open(path, encoding="utf-8") as f:
            try:
                doc = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not JSON: {exc}") from exc
        try:
            return cls.from_json(doc)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc

    def dump(self, path: str | Path) -> None:
        """Write the trace as JSON, one point per line."""
        doc = self.to_json()
        points = doc.pop("points")
        head = json.dumps(doc, indent=2)[:-2]
        body = ",\n".join("    " + json.dumps(p) for p in points)
        Path(path).write_text(f'{head},\n  "points": [\n{body}\n  ]\n}}\n', encoding="utf-8")


def _replace(trace: Trace, **changes: Any) -> Trace:
    values: dict[str, Any] = {
        "times_s": trace.times_s,
        "anon_bytes": trace.anon_bytes,
        "cache_bytes": trace.cache_bytes,
        "hot_cache_bytes": trace.hot_cache_bytes,
        "cache_touch_per_s": trace.cache_touch_per_s,
        "read_bytes_per_s": trace.read_bytes_per_s,
        "repeat": trace.repeat,
        "name": trace.name,
        "description": trace.description,
        "ram_bytes": trace.ram_bytes,
        "start_s": trace.start_s,
    }
    values.update(changes)
    return Trace(**values)


def _num(t: float) -> int | float:
    return int(t) if float(t).is_integer() else t


def _amount(value: object, where: str) -> int:
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"{where} must be a non-negative integer of bytes or a size string")


# --- generators --------------------------------------------------------------------------
# Each takes the guest's RAM and returns a trace made for it. Fractions are of RAM; the
# guest's kernel and base system take roughly 8% more, so anon + cache near 0.9 is "full".


def _build(
    name: str,
    ram_bytes: int,
    *,
    pts: list[tuple[float, float, float]],
    repeat: bool,
    description: str,
    hot: list[float] | None = None,
    touch_per_s: float | None = None,
    read_frac_per_s: float = 0.0,
) -> Trace:
    return Trace(
        times_s=tuple(round(t, 3) for t, _, _ in pts),
        anon_bytes=tuple(int(a * ram_bytes) for _, a, _ in pts),
        cache_bytes=tuple(int(c * ram_bytes) for _, _, c in pts),
        hot_cache_bytes=(
            None
            if hot is None
            else tuple(int(min(h, c) * ram_bytes) for h, (_, _, c) in zip(hot, pts, strict=True))
        ),
        cache_touch_per_s=touch_per_s,
        read_bytes_per_s=int(read_frac_per_s * ram_bytes),
        repeat=repeat,
        name=name,
        description=description,
        ram_bytes=ram_bytes,
    )


def idle(ram_bytes: int, *, anon_frac: float = 0.12, cache_frac: float = 0.08) -> Trace:
    """A guest doing nothing: small, flat demand."""
    return _build(
        "idle",
        ram_bytes,
        pts=[(0, anon_frac, cache_frac)],
        repeat=False,
        description="flat, small demand",
    )


def diurnal(
    ram_bytes: int,
    *,
    period_s: float = 86_400.0,
    low_frac: float = 0.15,
    high_frac: float = 0.55,
    cache_frac: float = 0.25,
    steps: int = 48,
) -> Trace:
    """Day and night: anon demand follows a sine wave; the cache fills at night (backups)."""
    pts = []
    for i in range(steps + 1):
        x = i / steps
        day = 0.5 - 0.5 * math.cos(2 * math.pi * x)  # 0 at midnight, 1 at noon
        pts.append(
            (x * period_s, low_frac + (high_frac - low_frac) * day, cache_frac * (1.2 - day))
        )
    return _build(
        "diurnal", ram_bytes, pts=pts, repeat=True, description="sine-shaped anon demand per day"
    )


def bursty(
    ram_bytes: int,
    *,
    duration_s: float = 3_600.0,
    base_frac: float = 0.15,
    burst_frac: float = 0.45,
    mean_gap_s: float = 240.0,
    burst_s: float = 30.0,
    rise_s: float = 3.0,
    cache_frac: float = 0.15,
    seed: int = 0,
) -> Trace:
    """Quiet with sudden allocation bursts (batch jobs, request spikes), at random times."""
    rng = random.Random(seed)
    pts: list[tuple[float, float, float]] = [(0, base_frac, cache_frac)]
    t = 1.0 + rng.expovariate(1 / mean_gap_s)
    while True:
        size = burst_frac * rng.uniform(0.5, 1.0)
        hold = burst_s * rng.uniform(0.5, 1.5)
        if t + 2 * rise_s + hold + 1.0 >= duration_s:
            break
        pts += [
            (t, base_frac, cache_frac),
            (t + rise_s, base_frac + size, cache_frac),
            (t + rise_s + hold, base_frac + size, cache_frac),
            (t + 2 * rise_s + hold, base_frac, cache_frac),
        ]
        t += 2 * rise_s + hold + 1.0 + rng.expovariate(1 / mean_gap_s)
    pts.append((duration_s, base_frac, cache_frac))
    return _build("bursty", ram_bytes, pts=pts, repeat=True, description="random allocation bursts")


def ramp(
    ram_bytes: int,
    *,
    duration_s: float = 3_600.0,
    start_frac: float = 0.1,
    end_frac: float = 0.8,
    cache_frac: float = 0.1,
) -> Trace:
    """Demand that grows steadily and stays (a leak, or a cache being warmed in anon memory)."""
    return _build(
        "ramp",
        ram_bytes,
        pts=[(0, start_frac, cache_frac), (duration_s, end_frac, cache_frac)],
        repeat=False,
        description="steady growth of anon demand",
    )


def cache_heavy(
    ram_bytes: int,
    *,
    period_s: float = 1_800.0,
    anon_frac: float = 0.12,
    cache_frac: float = 0.75,
) -> Trace:
    """A file server: little anon memory, a page cache that would fill the guest."""
    pts = [
        (0, anon_frac, 0.05),
        (period_s * 0.3, anon_frac, cache_frac),
        (period_s * 0.9, anon_frac, cache_frac),
        (period_s, anon_frac, 0.05),
    ]
    return _build(
        "cache-heavy",
        ram_bytes,
        pts=pts,
        repeat=True,
        description="page cache grows to most of RAM",
    )


def sawtooth(
    ram_bytes: int,
    *,
    period_s: float = 600.0,
    low_frac: float = 0.15,
    high_frac: float = 0.6,
    cache_frac: float = 0.1,
) -> Trace:
    """A slow leak and a restart: anon demand climbs over a period, then drops at once."""
    pts = [
        (0, low_frac, cache_frac),
        (period_s - 1, high_frac, cache_frac),
        (period_s, low_frac, cache_frac),
    ]
    return _build("sawtooth", ram_bytes, pts=pts, repeat=True, description="leak, then restart")


def database(
    ram_bytes: int,
    *,
    period_s: float = 3_600.0,
    anon_frac: float = 0.15,
    cache_frac: float = 0.6,
    hot_frac: float = 0.5,
    touch_per_s: float = 0.05,
) -> Trace:
    """A database whose buffer is the page cache: most of the cache is hot and read all the
    time; squeezing it sends the queries to disk. Its working set swells in busy hours."""
    pts = [
        (0, anon_frac, cache_frac),
        (period_s * 0.4, anon_frac, cache_frac),
        (period_s * 0.5, anon_frac + 0.05, cache_frac + 0.1),
        (period_s * 0.8, anon_frac + 0.05, cache_frac + 0.1),
        (period_s, anon_frac, cache_frac),
    ]
    hot = [hot_frac, hot_frac, hot_frac + 0.1, hot_frac + 0.1, hot_frac]
    return _build(
        "database",
        ram_bytes,
        pts=pts,
        hot=hot,
        touch_per_s=touch_per_s,
        repeat=True,
        description="page-cache buffer, mostly hot",
    )


def build_server(
    ram_bytes: int,
    *,
    period_s: float = 1_800.0,
    build_s: float = 600.0,
    idle_anon_frac: float = 0.1,
    build_anon_frac: float = 0.45,
    cache_frac: float = 0.45,
    build_hot_frac: float = 0.3,
    idle_hot_frac: float = 0.03,
    touch_per_s: float = 0.02,
) -> Trace:
    """A CI builder: a build every period (compilers in anon memory, headers and sources hot
    in the cache), idle in between with its tree still cached but cold."""
    rise = 20.0
    pts = [
        (0, idle_anon_frac, cache_frac),
        (rise, build_anon_frac, cache_frac),
        (build_s - rise, build_anon_frac, cache_frac),
        (build_s, idle_anon_frac, cache_frac),
        (period_s, idle_anon_frac, cache_frac),
    ]
    hot = [build_hot_frac, build_hot_frac, build_hot_frac, idle_hot_frac, idle_hot_frac]
    return _build(
        "build-server",
        ram_bytes,
        pts=pts,
        hot=hot,
        touch_per_s=touch_per_s,
        repeat=True,
        description="periodic builds, hot headers while building",
    )


def file_server(
    ram_bytes: int,
    *,
    anon_frac: float = 0.1,
    cache_frac: float = 0.8,
    hot_frac: float = 0.25,
    touch_per_s: float = 0.01,
    read_frac_per_s: float = 0.0005,
) -> Trace:
    """A file server: a cache that would fill the guest, of which the popular files are hot
    (each read every minute or two); requests for other files read new data all the time."""
    return _build(
        "file-server",
        ram_bytes,
        pts=[(0, anon_frac, cache_frac)],
        hot=[hot_frac],
        touch_per_s=touch_per_s,
        read_frac_per_s=read_frac_per_s,
        repeat=False,
        description="big cache, popular files hot",
    )


def stream_once(
    ram_bytes: int,
    *,
    anon_frac: float = 0.1,
    cache_frac: float = 0.8,
    hot_frac: float = 0.02,
    read_frac_per_s: float = 0.002,
) -> Trace:
    """A guest that streams files once and never again (backups, media, log shipping): the
    cache fills with data nobody reads twice. Reclaiming it costs nothing."""
    return _build(
        "stream-once",
        ram_bytes,
        pts=[(0, anon_frac, cache_frac)],
        hot=[hot_frac],
        read_frac_per_s=read_frac_per_s,
        repeat=False,
        description="cache full of data read once",
    )


GENERATORS: dict[str, Callable[..., Trace]] = {
    "idle": idle,
    "diurnal": diurnal,
    "bursty": bursty,
    "ramp": ramp,
    "cache-heavy": cache_heavy,
    "sawtooth": sawtooth,
    "database": database,
    "build-server": build_server,
    "file-server": file_server,
    "stream-once": stream_once,
}


def by_name(spec: str, *, ram_bytes: int, seed: int = 0) -> Trace:
    """A generator name (``bursty``), an example name, or a JSON file path, sized for RAM.

    Generator names win over example files of the same name; pass a path for the file.

    ``seed`` picks the random bursts of ``bursty`` and de-phases repeating traces, so the
    guests of a fleet do not all peak at the same moment.
    """
    gen = GENERATORS.get(spec)
    if gen is not None:
        trace = gen(ram_bytes, seed=seed) if spec == "bursty" else gen(ram_bytes)
    else:
        path = Path(spec)
        if not path.exists() and (EXAMPLES_DIR / f"{spec}.json").exists():
            path = EXAMPLES_DIR / f"{spec}.json"
        if not path.exists():
            names = ", ".join(GENERATORS)
            raise ValueError(f"no trace {spec!r}: use one of {names} or a JSON file")
        trace = Trace.load(path).scaled(ram_bytes)
    if seed and trace.repeat and spec != "bursty":
        trace = trace.shifted(random.Random(seed).uniform(0, trace.duration_s))
    return trace


def write_examples(directory: Path = EXAMPLES_DIR, *, ram_bytes: int = 1024 * MiB) -> None:
    """Regenerate the example JSON traces shipped in ``balloond/replay/examples/``."""
    directory.mkdir(parents=True, exist_ok=True)
    bursty(ram_bytes, duration_s=900.0, mean_gap_s=120.0, seed=1).dump(directory / "bursty.json")
    diurnal(ram_bytes, steps=24).dump(directory / "diurnal.json")
    sawtooth(ram_bytes).dump(directory / "sawtooth.json")
