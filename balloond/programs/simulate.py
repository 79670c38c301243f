"""``balloond simulate``: replay workload traces against a policy file, with no QEMU.

An operator who wants to know what a policy would do before deploying it gives the config
file and one trace per guest (the synthetic examples in ``balloond/sim/traces/``, or traces
recorded from their own guests with ``balloond run --record-trace DIR``). Each trace
becomes a simulated guest named after its file, with the policy ``[assign]`` gives that
name; the guests share a host of ``--host-memory`` and replay in virtual time under
balloond's engine and under the baselines (no ballooning, MOM-like, Proxmox-like). The
report (a table on stdout; ``report.md``, ``results.json`` and ``chart.png`` in ``--out``)
is the one the quality benchmark produces.

Exit codes: 0 done; 64 a bad ``--host-memory`` or ``--duration``; 65 a trace file is
invalid (the message names the file and the problem); 78 the config is invalid (printed
like ``balloond config check``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

from balloond.core.errors import TraceError
from balloond.core.units import GiB, fmt_size, parse_size
from balloond.replay import HostSpec, RunResult, Scenario, compare, load_traces, overcommitted_host
from balloond.replay import standard_controllers as controllers_for
from balloond.replay.report import (
    DEFINITIONS,
    guest_rows,
    markdown_table,
    render_markdown,
    render_text,
    targets,
    text_table,
    top_reclaimer_line,
    write_chart,
)
from balloond.replay.scoring import RunMetrics
from balloond.runtime.config import Config, load_config

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
#: Without --host-memory, the host has room for this share of the guests' boot memory
#: (beside its own use and QEMU's overhead).
DEFAULT_HOST_SHARE = 0.75
#: Without --duration, the longest trace plays once, but at least this long.
MIN_DEFAULT_DURATION_S = 600.0
SUBJECT = "balloond"
GUEST_CELLS = "reclaimed GiB-h / pressure s / OOM kills"
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*$")


def parse_duration(text: str) -> float:
    """``"900"``, ``"900s"``, ``"15m"``, ``"2h"`` -> seconds; ValueError otherwise."""
    m = _DURATION_RE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 900, 15m, 2h)")
    factor = {"h": 3600.0, "m": 60.0, "min": 60.0}.get(m.group(2) or "s", 1.0)
    return float(m.group(1)) * factor


def build_scenario(
    config: Config, traces: list[Path], *, host_bytes: int | None, duration_s: float | None
) -> Scenario:
    """Guests from ``traces`` (TraceError if one is bad) on a host, for a duration."""
    guests = load_traces(traces)
    if duration_s is None:
        duration_s = max(MIN_DEFAULT_DURATION_S, *(g.trace.duration_s for g in guests))
    poll_s = config.daemon.poll_interval_s
    return Scenario(
        guests=guests,
        host=(
            HostSpec(total_bytes=host_bytes)
            if host_bytes is not None
            else overcommitted_host(guests, share=DEFAULT_HOST_SHARE)
        ),
        duration_s=duration_s,
        tick_s=min(0.25, poll_s),
        stats_interval_s=max(1, round(poll_s)),
    )


def _header(config_path: Path, config: Config, scenario: Scenario, host_given: bool) -> str:
    boot = scenario.boot_total_bytes
    host = scenario.host.total_bytes
    how = (
        ""
        if host_given
        else f" (room for {DEFAULT_HOST_SHARE:.0%} of the guests' boot memory; --host-memory)"
    )
    guests = ", ".join(
        f"{g.name} {fmt_size(g.ram_bytes)} ({config.policy_name_for(g.name)})"
        for g in scenario.guests
    )
    minutes = scenario.duration_s / 60
    return (
        f"policy file {config_path}; {len(scenario.guests)} guest(s), "
        f"{fmt_size(boot)} of boot memory: {guests}\n"
        f"host {fmt_size(host)}{how}; {minutes:g} simulated minutes"
    )


def _top_lines(results: list[RunMetrics]) -> list[str]:
    line = top_reclaimer_line(results, subject=SUBJECT)
    return [] if line is None else [f"- {line}"]


def _write(out: Path, scenario: Scenario, runs: list[RunResult], header: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = [r.metrics for r in runs]
    lines = [
        "# balloond simulate",
        "",
        *[f"{line}  " for line in header.splitlines()],
        "",
        markdown_table(results),
        "",
        *[f"- {t.line()}" for t in targets(results, subject=SUBJECT)],
        *_top_lines(results),
        "",
        f"Per guest ({GUEST_CELLS}):",
        "",
        render_markdown(*guest_rows(runs)),
        "",
        DEFINITIONS,
        "![chart](chart.png)",
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    data = {
        "duration_s": scenario.duration_s,
        "host_bytes": scenario.host.total_bytes,
        "guests": [{"name": g.name, "ram_bytes": g.ram_bytes} for g in scenario.guests],
        "results": [{**asdict(r.metrics), "guests": [asdict(g) for g in r.guests]} for r in runs],
    }
    raw = out / "results.json"
    raw.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    written = [report, raw]
    try:
        written.append(
            write_chart(
                runs,
                out / "chart.png",
                title=f"{len(scenario.guests)} guest(s) on {scenario.host.total_bytes / GiB:.1f}"
                " GiB of host RAM",
                boot_total_bytes=scenario.boot_total_bytes,
            )
        )
    except ImportError:
        print(
            "balloond simulate: no chart: matplotlib is not installed "
            "(pip install 'balloond[bench]')",
            file=sys.stderr,
        )
    return written


def main(args: argparse.Namespace) -> int:
    """Run ``balloond simulate`` (see the module docstring); ConfigError goes to the CLI."""
    config = load_config(args.config)
    try:
        host_bytes = None if args.host_memory is None else parse_size(args.host_memory)
        duration_s = None if args.duration is None else parse_duration(args.duration)
    except ValueError as exc:
        print(f"balloond simulate: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        scenario = build_scenario(
            config, list(args.trace), host_bytes=host_bytes, duration_s=duration_s
        )
    except TraceError as exc:
        print(f"balloond simulate: {exc}", file=sys.stderr)
        return EX_DATAERR
    except ValueError as exc:  # a host too small for its guests' overheads, say
        print(f"balloond simulate: {exc}", file=sys.stderr)
        return EX_USAGE
    header = _header(args.config, config, scenario, host_bytes is not None)
    print(header, flush=True)

    def progress(result: RunResult) -> None:
        print(f"  replayed under {result.metrics.controller}", file=sys.stderr, flush=True)

    runs = compare(scenario, controllers_for(config, name=SUBJECT), progress=progress)
    results = [r.metrics for r in runs]
    print()
    print(text_table(results))
    print()
    for t in targets(results, subject=SUBJECT):
        print(t.line())
    for line in _top_lines(results):
        print(line.removeprefix("- "))
    print()
    print(f"per guest ({GUEST_CELLS}):")
    print(render_text(*guest_rows(runs)))
    written = _write(Path(args.out), scenario, runs, header)
    print()
    print("wrote " + ", ".join(str(p) for p in written))
    return EX_OK
