"""``python -m testkit.sim``: serve a fleet of simulated guests until Ctrl-C or SIGTERM.

For running balloond against many guests by hand, in demos and in benchmarks that drive
the daemon as a separate process::

    python -m testkit.sim --dir /tmp/fleet --guests 100 --ram 1GiB --trace bursty

Each guest listens on ``DIR/<name>.sock``; the sockets are listed on stdout once they all
accept connections, then the fleet runs until it is told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from balloond.core.units import fmt_size, parse_size
from balloond.replay.traces import GENERATORS, by_name
from testkit.sim.fleet import SimFleet
from testkit.sim.qmp_server import SimGuestSpec


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split(".")]
    if not 2 <= len(parts) <= 3:
        raise argparse.ArgumentTypeError(f"not a QEMU version: {text!r} (e.g. 7.2.0)")
    return (parts[0], parts[1], parts[2] if len(parts) == 3 else 0)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m testkit.sim",
        description="Serve simulated QEMU guests over QMP unix sockets.",
    )
    ap.add_argument("--dir", required=True, help="directory for the QMP sockets")
    ap.add_argument("--guests", type=int, default=10, help="number of guests (default 10)")
    ap.add_argument("--ram", type=_size, default=parse_size("1GiB"), help="RAM per guest")
    ap.add_argument(
        "--trace",
        default="idle",
        help=f"workload: {', '.join(GENERATORS)}, an example name or a JSON file",
    )
    ap.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="multiply trace times by this (0.01 plays a day in about 15 minutes)",
    )
    ap.add_argument("--prefix", default="guest", help="guest names are PREFIX-0001 ...")
    ap.add_argument("--deflate-on-oom", action="store_true", help="guests deflate under OOM")
    ap.add_argument("--no-driver", action="store_true", help="guests without a balloon driver")
    ap.add_argument("--no-balloon", action="store_true", help="machines without a balloon device")
    ap.add_argument("--qemu-version", type=_version, default=(7, 2, 0), help="e.g. 9.2.0")
    ap.add_argument("--tick", type=float, default=0.1, help="ticker period in seconds")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each guest's changes")
    args = ap.parse_args(argv)
    if args.guests < 1:
        ap.error("--guests must be at least 1")
    if args.time_scale <= 0:
        ap.error("--time-scale must be positive")
    return args


def build_specs(args: argparse.Namespace) -> list[SimGuestSpec]:
    """One spec per guest; each gets its own seed so the fleet is not in lock step."""
    width = max(4, len(str(args.guests)))
    specs = []
    for i in range(1, args.guests + 1):
        trace = by_name(args.trace, ram_bytes=args.ram, seed=i)
        if args.time_scale != 1.0:
            trace = trace.stretched(args.time_scale)
        specs.append(
            SimGuestSpec(
                f"{args.prefix}-{i:0{width}d}",
                args.ram,
                trace,
                deflate_on_oom=args.deflate_on_oom,
                driver=not args.no_driver,
                balloon=not args.no_balloon,
                qemu_version=args.qemu_version,
            )
        )
    return specs


async def serve(args: argparse.Namespace) -> None:
    """Run the fleet until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimFleet(dir=args.dir, guests=build_specs(args), tick_s=args.tick) as fleet:
        paths = [str(g.socket_path) for g in fleet]
        print(f"{len(paths)} guests of {fmt_size(args.ram)}, trace {args.trace!r}:", flush=True)
        for path in paths:
            print(f"  {path}")
        print("serving; Ctrl-C or SIGTERM stops", flush=True)
        await stop.wait()
    print("stopped, sockets removed", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except (ValueError, OSError) as exc:
        print(f"testkit.sim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
