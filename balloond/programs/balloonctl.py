"""``balloonctl``: look at and steer a running balloond through its control socket.

It sends one JSON request per command (see :mod:`balloond.adapters.control_socket`) and
prints the reply for people (sizes in MiB) or, with ``--json``, as the daemon sent it (sizes
in bytes). Sizes on the command line need a unit (``512MiB``, ``2GiB``): a bare number is
ambiguous between bytes and MiB, so it is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from balloond.core.units import MiB, fmt_mib, parse_duration, parse_size

DEFAULT_SOCKET = "/run/balloond/control.sock"
#: How long to wait for the daemon's reply (a reload re-reads the config; allow for it).
REPLY_TIMEOUT_S = 15.0
MAX_REPLY_BYTES = 16 * MiB

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_UNKNOWN_GUEST = 4
EXIT_BAD_SIZE = 5
EXIT_OUT_OF_BOUNDS = 6
EXIT_BAD_CONFIG = 7

#: The daemon's error codes (balloond.core.errors.RequestError.code) -> exit status.
_EXIT_FOR_CODE = {
    "unknown_guest": EXIT_UNKNOWN_GUEST,
    "out_of_bounds": EXIT_OUT_OF_BOUNDS,
    "bad_config": EXIT_BAD_CONFIG,
}

EPILOG = f"""\
sizes take a unit: 512MiB, 1.5GiB (binary) or 500MB (decimal); durations: 90, 10m, 2h, 1d.

exit status:
  {EXIT_OK}  success
  {EXIT_REFUSED}  the daemon refused the request for another reason (the message says why)
  {EXIT_USAGE}  bad arguments (including a bad --for duration)
  {EXIT_NOT_RUNNING}  balloond is not running, or its control socket cannot be reached
  {EXIT_UNKNOWN_GUEST}  no guest of that name
  {EXIT_BAD_SIZE}  SIZE is not a size with a unit
  {EXIT_OUT_OF_BOUNDS}  SIZE is outside the guest's bounds (policy minimum .. boot memory)
  {EXIT_BAD_CONFIG}  reload refused: the config file is invalid (the old one stays)

environment:
  BALLOOND_SOCKET  control socket path (default {DEFAULT_SOCKET})
"""


class CtlError(Exception):
    """A failure to report on stderr with its exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"balloonctl: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="balloonctl",
        description="Look at and steer a running balloond.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--socket",
        "-s",
        type=Path,
        default=Path(os.environ.get("BALLOOND_SOCKET") or DEFAULT_SOCKET),
        help="balloond's control socket (default: $BALLOOND_SOCKET or %(default)s)",
    )
    p.add_argument(
        "--timeout", type=float, default=REPLY_TIMEOUT_S, help="seconds to wait for a reply"
    )
    p.add_argument(
        "--broker",
        metavar="HOST[:PORT]",
        help="talk to a daemon over MQTT on this broker instead of the control socket",
    )
    p.add_argument(
        "--host",
        metavar="NAME",
        help="with --broker: the daemon publishing under balloond/NAME (or a whole prefix)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    st = sub.add_parser("status", help="a table of guests (or one guest)")
    st.add_argument("guest", nargs="?", help="only this guest")
    st.add_argument("--json", action="store_true", help="the daemon's reply as JSON (bytes)")

    s = sub.add_parser("set", help="hold a guest at SIZE until resumed (or for DURATION)")
    s.add_argument("guest")
    s.add_argument("size", help="e.g. 512MiB or 2GiB")
    s.add_argument("--for", dest="hold", metavar="DURATION", help="e.g. 10m; then automatic")
    s.add_argument("--json", action="store_true", help="print the reply as JSON")

    for op, what in (("pause", "leave balloons as they are"), ("resume", "back to automatic")):
        c = sub.add_parser(op, help=f"{what}: one guest, or --all")
        c.add_argument("guest", nargs="?")
        c.add_argument("--all", action="store_true", help="every guest")
        c.add_argument("--json", action="store_true", help="print the reply as JSON")

    e = sub.add_parser("explain", help="what the policy would decide for GUEST now, and why")
    e.add_argument("guest")
    e.add_argument("--json", action="store_true", help="print the reply as JSON")

    sub.add_parser("top", help="a live view of the guests, refreshed each second (q quits)")

    fl = sub.add_parser("fleet", help="every host's balloond on an MQTT broker (--broker)")
    fl.add_argument(
        "--prefix", default="balloond/+", help="MQTT filter of daemons' prefixes (%(default)s)"
    )
    fl.add_argument("--json", action="store_true", help="one object per host")

    pl = sub.add_parser(
        "plot", help="GUEST's memory over time, its balloon changes marked, as a PNG"
    )
    pl.add_argument("guest")
    pl.add_argument("--since", default="1h", help="how far back, e.g. 10m, 1h (default 1h)")
    pl.add_argument("--out", type=Path, required=True, help="the PNG to write")
    pl.add_argument("--json", action="store_true", help="print the timeline as JSON instead")

    r = sub.add_parser("reload", help="re-read the config file (an invalid one is refused)")
    r.add_argument("--json", action="store_true", help="print the reply as JSON")
    return p


# --- talking to the daemon --------------------------------------------------------------


def request(path: Path, req: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
    """Send one request and return the daemon's reply object."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CtlError(
                f"balloond is not running (no one listens on {path}: {exc.strerror})",
                EXIT_NOT_RUNNING,
            ) from None
        except PermissionError:
            raise CtlError(
                f"permission denied on {path} (the control socket is root's; try sudo)",
                EXIT_NOT_RUNNING,
            ) from None
        except OSError as exc:
            raise CtlError(f"cannot reach balloond at {path}: {exc}", EXIT_NOT_RUNNING) from None
        try:
            sock.sendall(json.dumps(req).encode() + b"\n")
            data = _read_line(sock)
        except TimeoutError:
            raise CtlError(
                f"balloond did not answer within {timeout_s:g}s", EXIT_NOT_RUNNING
            ) from None
        except OSError as exc:
            raise CtlError(f"lost the connection to balloond: {exc}", EXIT_NOT_RUNNING) from None
    finally:
        sock.close()
    try:
        reply = json.loads(data)
    except ValueError:
        raise CtlError(f"balloond sent an unreadable reply: {data[:200]!r}", EXIT_REFUSED) from None
    if not isinstance(reply, dict):
        raise CtlError(f"balloond sent an unexpected reply: {reply!r:.200}", EXIT_REFUSED)
    return reply


def _read_line(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError("balloond closed the connection without a reply")
        nl = chunk.find(b"\n")
        if nl >= 0:
            chunks.append(chunk[:nl])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise ConnectionResetError("reply too large")


def _result(reply: dict[str, Any]) -> Any:
    if reply.get("ok"):
        return reply.get("result")
    error = reply.get("error") or {}
    code = str(error.get("code", "error"))
    message = str(error.get("message", "request refused"))
    raise CtlError(message, _EXIT_FOR_CODE.get(code, EXIT_REFUSED))


# --- formatting -------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}m"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _epoch(iso: str) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def _mode(g: dict[str, Any], now: float) -> str:
    mode = str(g.get("mode", "?"))
    hold = g.get("hold_until")
    if mode == "manual" and isinstance(hold, int | float):
        return f"manual ({_ago(hold - now)} left)"
    return mode


def _last_action(g: dict[str, Any], now: float) -> tuple[str, str]:
    action = g.get("last_action")
    decision = g.get("last_decision")
    if not action:
        reason = str(decision.get("reason")) if decision else "-"
        return "-", reason
    when = _epoch(str(action.get("time")))
    ago = f" {_ago(now - when)} ago" if when is not None else ""
    moved = f"{fmt_mib(action.get('old_bytes'))}->{fmt_mib(action.get('new_bytes'))}"
    return f"{moved} by {action.get('actor', '?')}{ago}", str(action.get("reason", "-"))


def format_status(status: dict[str, Any], *, now: float | None = None) -> str:
    """The ``balloonctl status`` table (MiB)."""
    now = time.time() if now is None else now
    rows = [
        (
            "GUEST",
            "STATE",
            "VIA",
            "ACTUAL",
            "TARGET",
            "AVAIL",
            "POLICY",
            "MODE",
            "LAST ACTION (MiB)",
            "REASON",
        )
    ]
    for g in status.get("guests", []):
        action, reason = _last_action(g, now)
        rows.append(
            (
                str(g.get("name")),
                str(g.get("state")),
                str(g.get("way") or "-"),
                fmt_mib(g.get("actual_bytes")),
                fmt_mib(g.get("target_bytes")),
                fmt_mib(g.get("available_bytes")),
                str(g.get("policy") or "-"),
                _mode(g, now),
                action,
                reason,
            )
        )
    numeric = {3, 4, 5}
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    s = status.get("summary") or {}
    head = (
        f"{s.get('guests', 0)} guests ({s.get('active', 0)} active), "
        f"{fmt_mib(s.get('reclaimed_bytes', 0))} MiB reclaimed, "
        f"{s.get('under_pressure', 0)} under pressure"
    )
    host = status.get("host")
    if host:
        head += (
            f"; host {fmt_mib(host.get('available_bytes'))} of "
            f"{fmt_mib(host.get('total_bytes'))} MiB "
            f"available{' (under pressure)' if host.get('pressure') else ''}"
        )
    out = [head]
    if status.get("dry_run"):
        out.append("dry run: balloond decides and logs but changes nothing")
    if status.get("reload_error"):
        out.append(f"last reload REFUSED (old config kept): {status['reload_error']}")
    for failure in status.get("task_failures") or []:
        again = "; restarting" if failure.get("restarting") else ""
        out.append(
            f"task {failure.get('task')} FAILED {failure.get('failures')}x, "
            f"last: {failure.get('last_error')}{again}"
        )
    if len(rows) == 1:
        out.append("no guests")
    else:
        out.append("")
        out.extend(lines)
    exposed = [
        str(g.get("name")) for g in status.get("guests", []) if g.get("deflate_on_oom") is False
    ]
    if exposed:
        out.append("")
        out.append(
            f"deflate-on-oom off: {', '.join(exposed)} (a surge faster than one stats "
            "interval can OOM-kill in a squeezed guest; see `balloonctl status GUEST`)"
        )
    return "\n".join(out)


def format_guest(g: dict[str, Any], *, now: float | None = None) -> str:
    """One guest, as ``key: value`` lines (MiB)."""
    now = time.time() if now is None else now
    action, reason = _last_action(g, now)
    lines = [
        f"guest:      {g.get('name')}",
        f"state:      {g.get('state')}",
        f"mode:       {_mode(g, now)}",
        f"policy:     {g.get('policy') or '-'}",
        f"boot:       {fmt_mib(g.get('boot_bytes'))} MiB",
        f"actual:     {fmt_mib(g.get('actual_bytes'))} MiB",
        f"target:     {fmt_mib(g.get('target_bytes'))} MiB",
        f"available:  {fmt_mib(g.get('available_bytes'))} MiB",
    ]
    if g.get("host_cap_bytes") is not None:
        lines.append(f"host cap:   {fmt_mib(g.get('host_cap_bytes'))} MiB")
    features = [
        f"{name} {'on' if g[key] else 'off'}"
        for key, name in (
            ("deflate_on_oom", "deflate-on-oom"),
            ("free_page_reporting", "free-page-reporting"),
        )
        if g.get(key) is not None
    ]
    if features:
        lines.append(f"balloon:    {', '.join(features)}")
    if g.get("stats_stale_s") is not None:
        lines.append(f"stats:      STALE, no guest report for {g['stats_stale_s']} s")
    lines.append(f"last:       {action} ({reason})")
    return "\n".join(lines)


def format_explain(e: dict[str, Any]) -> str:
    lines = [format_guest(e)]
    decision = e.get("decision")
    if decision:
        target = decision.get("target_bytes")
        verdict = "keep as is" if target is None else f"target {fmt_mib(target)} MiB"
        lines.append(f"decision:   {verdict} ({decision.get('reason')})")
        floor = decision.get("floor_bytes")
        if isinstance(floor, int):
            parts = []
            working_set = decision.get("working_set_bytes")
            if isinstance(working_set, int):
                parts.append(f"working set {fmt_mib(working_set)} MiB, kept since refaults")
            reserve = decision.get("surge_reserve_bytes")
            if isinstance(reserve, int):
                parts.append(f"surge reserve {fmt_mib(reserve)} MiB")
            extra = f" ({'; '.join(parts)})" if parts else ""
            lines.append(f"floor:      {fmt_mib(floor)} MiB{extra}")
        io = decision.get("io_bps")
        if isinstance(io, int | float) and io > 0:
            lines.append(f"disk reads: {io / (1 << 20):.1f} MiB/s")
    lines.append(f"why:        {e.get('explanation')}")
    if e.get("note"):
        lines.append(f"note:       {e['note']}")
    return "\n".join(lines)


def _size_arg(text: str) -> int:
    if text.strip().replace(".", "", 1).isdigit():
        raise CtlError(
            f"bad size {text!r}: give a unit, e.g. {text.strip()}MiB or {text.strip()}GiB",
            EXIT_BAD_SIZE,
        )
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise CtlError(f"bad size: {exc}", EXIT_BAD_SIZE) from None
    if size <= 0:
        raise CtlError(f"bad size {text!r}: must be positive", EXIT_BAD_SIZE)
    return size


def _build_request(args: argparse.Namespace) -> dict[str, Any]:
    cmd = args.command
    if cmd == "status":
        return {"op": "status", "guest": args.guest} if args.guest else {"op": "status"}
    if cmd == "set":
        req: dict[str, Any] = {"op": "set", "guest": args.guest, "size": _size_arg(args.size)}
        if args.hold is not None:
            try:
                req["hold"] = parse_duration(args.hold)
            except ValueError as exc:
                raise CtlError(f"bad --for: {exc}", EXIT_USAGE) from None
        return req
    if cmd in ("pause", "resume"):
        if args.all == (args.guest is not None):
            raise CtlError(f"{cmd}: name one guest or give --all", EXIT_USAGE)
        return {"op": cmd, "all": True} if args.all else {"op": cmd, "guest": args.guest}
    if cmd == "explain":
        return {"op": "explain", "guest": args.guest}
    if cmd == "plot":
        try:
            parse_duration(args.since)
        except ValueError as exc:
            raise CtlError(f"bad --since: {exc}", EXIT_USAGE) from None
        return {"op": "timeline", "guest": args.guest, "since": args.since}
    if cmd == "reload":
        return {"op": "reload"}
    raise CtlError(f"unknown command {cmd!r}", EXIT_USAGE)  # pragma: no cover


def _render(args: argparse.Namespace, result: Any) -> str:
    cmd = args.command
    if cmd == "status":
        return format_guest(result) if args.guest else format_status(result)
    if cmd == "set":
        hold = f" for {args.hold}" if args.hold is not None else " until `balloonctl resume`"
        held = fmt_mib(result.get("manual_target_bytes"))
        return f"{result.get('name')}: held at {held} MiB{hold}"
    if cmd in ("pause", "resume"):
        names = ", ".join(result.get("guests", [])) or "no guests"
        return f"{names}: {result.get('mode')}"
    if cmd == "explain":
        return format_explain(result)
    if cmd == "plot":
        from balloond.programs.plot import PlotError, draw

        try:
            return draw(result, args.out)
        except PlotError as exc:
            raise CtlError(str(exc), EXIT_REFUSED) from None
    if cmd == "reload":
        return f"reloaded {result.get('reloaded') or 'the config'}"
    return json.dumps(result, indent=2)  # pragma: no cover


def _fleet(args: argparse.Namespace) -> Any:
    """``fleet``, or any command sent over MQTT (``--broker``); the result to render."""
    from balloond.programs import fleet

    try:
        if args.command == "fleet":
            if not args.broker:
                raise CtlError("fleet needs --broker HOST[:PORT]", EXIT_USAGE)
            hosts = fleet.snapshot(args.broker, prefix=args.prefix, timeout_s=args.timeout)
            rows = fleet.summarise(hosts)
            return rows if args.json else fleet.format_fleet(rows)
        if not args.host:
            raise CtlError("--broker needs --host NAME (or use `balloonctl fleet`)", EXIT_USAGE)
        reply = fleet.send(
            args.broker, host=args.host, request=_build_request(args), timeout_s=args.timeout
        )
    except fleet.FleetError as exc:
        raise CtlError(str(exc), EXIT_NOT_RUNNING) from None
    return _result(reply)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "fleet" or args.broker:
        if args.command in ("top", "plot"):
            print(f"balloonctl: {args.command} works on the control socket only", file=sys.stderr)
            return EXIT_USAGE
        try:
            result = _fleet(args)
            if args.command == "fleet" and not args.json:
                print(result)
            elif args.json:
                print(json.dumps(result, indent=2, sort_keys=True))
            else:
                print(_render(args, result))
        except CtlError as exc:
            print(f"balloonctl: {exc}", file=sys.stderr)
            return exc.status
        except KeyboardInterrupt:
            return 130
        return EXIT_OK
    if args.command == "top":
        from balloond.programs.top import run as run_top

        def ask(path: Path, req: dict[str, Any], *, timeout_s: float) -> Any:
            return _result(request(path, req, timeout_s=timeout_s))

        try:
            return run_top(args.socket, timeout_s=args.timeout, request=ask)
        except KeyboardInterrupt:
            return 130
    try:
        req = _build_request(args)
        result = _result(request(args.socket, req, timeout_s=args.timeout))
    except CtlError as exc:
        print(f"balloonctl: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    try:
        if args.json:
            print(json.dumps(result, indent=2, sort_keys=True))
        else:
            print(_render(args, result))
    except CtlError as exc:
        print(f"balloonctl: {exc}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:  # `balloonctl status | head`
        sys.stderr.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
