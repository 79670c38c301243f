"""``python -m benchmarks.run [--quick]``: every benchmark, then ``benchmarks/RESULTS.md``.

Runs the scale benchmark (:mod:`benchmarks.scale`: the real daemon against thousands of
simulated guests) and then the policy-quality benchmark (:mod:`benchmarks.quality`: the
engine against baselines in virtual time), and writes one report: the command, the date, the
machine, each benchmark's section and its charts (PNG files next to the report). Progress
goes to stdout as it happens.

Full mode takes several minutes (the scale benchmark settles each fleet for longer than the
daemon's one minute of history, so memory is measured full); ``--quick`` is a first look in
about two minutes, with shorter windows (and memory not yet at its steady state).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks import scale

OUT_DIR = Path(__file__).resolve().parent
REPORT = OUT_DIR / "RESULTS.md"
#: Sections written by runs too long for every ``make bench``, which RESULTS.md carries
#: from one report to the next: the real-guest measurements (``make bench-guests``) and
#: the 10-minute soak (``make soak``).
GUESTS = OUT_DIR / "guests.md"
GUESTS_HEADING = "## Real guests"
RELIABILITY = OUT_DIR / "reliability.md"
RELIABILITY_HEADING = "## Reliability"
CARRIED = ((GUESTS_HEADING, GUESTS), (RELIABILITY_HEADING, RELIABILITY))


def with_carried(report: str) -> str:
    """``report`` with its carried sections replaced by the latest text of each."""
    head = report
    for heading, _ in CARRIED:
        head = head.split(f"\n{heading}\n", 1)[0]
    out = head.rstrip() + "\n"
    for _, path in CARRIED:
        if path.exists():
            out += "\n" + path.read_text(encoding="utf-8").rstrip() + "\n"
    return out


def _progress(started: float) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(f"[{time.monotonic() - started:5.0f}s] {line}", flush=True)

    return say


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def machine() -> list[str]:
    """Bullet lines describing where the numbers were measured."""
    usable = len(os.sched_getaffinity(0))
    return [
        f"- CPU: {_cpu_model()}, {os.cpu_count()} cores ({usable} usable by this run)",
        f"- RAM: {_ram_gib()}",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()}",
    ]


def _section(name: str, run: Callable[[], str], say: Callable[[str], None]) -> tuple[str, bool]:
    """Run one benchmark; a failure becomes its section's text instead of ending the run."""
    started = time.monotonic()
    say(f"{name}: starting")
    try:
        text = run()
    except Exception:  # report what broke and go on with the other benchmarks
        say(f"{name}: FAILED")
        trace = traceback.format_exc()
        print(trace, file=sys.stderr)
        last = trace.strip().splitlines()[-1]
        return f"## {name.capitalize()}\n\nThis benchmark failed: `{last}`\n", False
    say(f"{name}: done in {time.monotonic() - started:.0f}s")
    return text, True


def _quality(quick: bool) -> str:
    try:
        from benchmarks import quality
    except ImportError as exc:
        return f"## Policy quality\n\nSkipped: `benchmarks.quality` is not available ({exc}).\n"
    return quality.main(quick, OUT_DIR)


def _earlier_sections() -> dict[str, str]:
    """The current report's head and ``## `` sections (carried ones left out), by heading."""
    if not REPORT.exists():
        return {}
    text = REPORT.read_text(encoding="utf-8")
    for heading, _ in CARRIED:
        text = text.split(f"\n{heading}\n", 1)[0]
    head, *chunks = text.split("\n## ")
    out = {"head": head.rstrip() + "\n"}
    for chunk in chunks:
        title = "## " + chunk.split("\n", 1)[0].strip()
        out[title] = "## " + chunk.rstrip() + "\n"
    return out


def rerun_head(earlier_head: str, only: str, rerun: str) -> list[str]:
    """The report's head after a run of one section: the earlier head with ``rerun`` (the
    line saying when that section was measured again) in place of any earlier such line for
    the same section, which no longer describes what the report shows."""
    earlier = f"measured the {only} section again"
    kept = [
        line
        for line in earlier_head.rstrip().splitlines()
        if not (line.startswith("- Then `") and line.endswith(earlier))
    ]
    return [*kept, rerun]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short windows, about two minutes")
    ap.add_argument(
        "--only",
        choices=("scale", "quality"),
        help="run one benchmark; the other's section is kept from the current RESULTS.md",
    )
    args = ap.parse_args(argv)
    quick: bool = args.quick
    started = time.monotonic()
    say = _progress(started)
    when = dt.datetime.now(dt.UTC)
    say(f"benchmarks ({'quick' if quick else 'full'}); the report goes to {REPORT}")

    earlier = _earlier_sections() if args.only else {}
    results = [
        (earlier["## Scale"], True)
        if args.only == "quality" and "## Scale" in earlier
        else _section("scale", lambda: scale.main(quick, OUT_DIR, say), say),
        (earlier["## Policy quality"], True)
        if args.only == "scale" and "## Policy quality" in earlier
        else _section("quality", lambda: _quality(quick), say),
    ]
    command = "python -m benchmarks.run" + (" --quick" if quick else "")
    elapsed = time.monotonic() - started
    head = [
        "# balloond benchmarks",
        "",
        "Written by the benchmarks themselves; do not edit by hand.",
        "",
        f"- Command: `{command}` ({'quick' if quick else 'full'} mode, {elapsed / 60:.1f} minutes)",
        f"- Date: {when:%Y-%m-%d %H:%M} UTC",
        *machine(),
        "",
    ]
    if args.only and "head" in earlier:
        rerun = (
            f"- Then `{command} --only {args.only}` on {when:%Y-%m-%d %H:%M} UTC "
            f"({elapsed / 60:.1f} minutes) measured the {args.only} section again"
        )
        head = [*rerun_head(earlier["head"], args.only, rerun), ""]
    body = [text.rstrip() + "\n" for text, _ in results]
    report = "\n".join(head) + "\n" + "\n".join(body)
    REPORT.write_text(with_carried(report), encoding="utf-8")
    say(f"wrote {REPORT} in {elapsed:.0f}s")
    return 0 if all(ok for _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
