"""``balloond``: the daemon's command line.

    balloond run --config FILE [--dry-run]   the daemon (what systemd starts);
                 [--record-trace DIR]       ... also writing each guest's workload trace
    balloond config check FILE               validate a config: exit 0, or 78 with each error
    balloond config schema                   JSON Schema of the config, for editors
    balloond simulate --config F --trace T   replay a workload trace against a policy file

Exit codes follow sysexits: 64 bad usage, 65 bad input data (a trace file), 78 bad
configuration, 69 a needed service is unavailable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from balloond import __version__
from balloond.core.errors import BalloondError, ConfigError

EX_OK = 0
EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CONFIG = 78
EX_INTERRUPTED = 130

T = TypeVar("T")
log = logging.getLogger("balloond")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop when it imports, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="balloond", description="Memory-balloon controller for QEMU/KVM guests."
    )
    p.add_argument("--version", action="version", version=f"balloond {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", "-c", type=Path, required=True, help="TOML config file")
    run.add_argument("--dry-run", action="store_true", help="decide and log, change nothing")
    run.add_argument(
        "--record-trace",
        type=Path,
        metavar="DIR",
        help="append each guest's samples to DIR/<guest>.json as a trace for simulate",
    )

    cfg = sub.add_parser("config", help="check a config file or print its schema")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = cfg_sub.add_parser("check", help="validate FILE; exit 78 listing every error")
    check.add_argument("file", type=Path)
    cfg_sub.add_parser("schema", help="print the JSON Schema of the config")

    sim = sub.add_parser("simulate", help="replay a workload trace against a policy file")
    sim.add_argument("--config", "-c", type=Path, required=True, help="TOML config file")
    sim.add_argument(
        "--trace",
        "-t",
        type=Path,
        action="append",
        required=True,
        help="trace JSON file (repeat for several guests)",
    )
    sim.add_argument(
        "--host-memory",
        default=None,
        help="host RAM, e.g. 8GiB (default: room for 75%% of the guests' boot memory)",
    )
    sim.add_argument(
        "--duration", default=None, help="simulated time, e.g. 900, 15m, 2h (default: a trace)"
    )
    sim.add_argument(
        "--out",
        type=Path,
        default=Path("simulate-report"),
        help="directory for the report and chart",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            return _config(args)
        if args.command == "run":
            return _run(args)
        if args.command == "simulate":
            from balloond.programs.simulate import main as simulate_main

            return simulate_main(args)
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EX_CONFIG
    except BalloondError as exc:
        print(f"balloond: {exc}", file=sys.stderr)
        return EX_SOFTWARE
    return EX_USAGE


def _config(args: argparse.Namespace) -> int:
    from balloond.runtime.config import config_schema, load_config

    if args.config_command == "schema":
        print(json.dumps(config_schema(), indent=2))
        return EX_OK
    try:
        load_config(args.file)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return EX_CONFIG
    print(f"{args.file}: ok")
    return EX_OK


def _run(args: argparse.Namespace) -> int:
    from balloond.programs.logs import setup_logging
    from balloond.runtime.config import load_config

    config = load_config(args.config)
    setup_logging(config.daemon.log_format, level=logging.DEBUG if args.verbose else logging.INFO)
    from balloond.service.serve import serve

    return run_async(
        serve(
            config,
            config_path=args.config,
            dry_run=args.dry_run or None,
            record_trace_dir=args.record_trace,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
