"""``balloonctl fleet`` and ``balloonctl --broker``: every host's balloond on one MQTT broker.

Each daemon with an ``[mqtt]`` section publishes, retained, its status (``online`` or
``offline``, the latter by its last will) under ``<prefix>/status`` and each guest's state
under ``<prefix>/guest/<name>/state``. ``fleet`` reads them all (prefixes matching
``--prefix``, default ``balloond/+``) and shows one row per host; ``--broker`` sends one
command to one host's daemon (``--host NAME``: prefix ``balloond/NAME``) on its ``cmd``
topic and prints the reply, as the control socket would. Imported only for these commands:
it brings aiomqtt (through the MQTT adapter), which plain ``balloonctl`` never loads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from balloond.adapters.mqtt import HostView, fleet_request, fleet_snapshot
from balloond.core.errors import BalloondError
from balloond.core.policy.decision import PRESSURE_REASONS
from balloond.core.units import fmt_mib

DEFAULT_PORT = 1883


class FleetError(Exception):
    """The broker could not be reached or answered nothing useful."""


def broker_address(text: str) -> tuple[str, int]:
    """``HOST`` or ``HOST:PORT`` (``[::1]:1883`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text.strip("[]"), DEFAULT_PORT
    try:
        number = int(port)
    except ValueError:
        raise FleetError(f"bad broker {text!r}: the port must be a number") from None
    if not 0 < number < 65536:
        raise FleetError(f"bad broker {text!r}: port out of range")
    return host.strip("[]"), number


def host_prefix(host: str) -> str:
    """The topic prefix of a host's daemon: ``balloond/NAME``, or a prefix given whole."""
    return host if "/" in host else f"balloond/{host}"


def snapshot(broker: str, *, prefix: str, timeout_s: float) -> dict[str, HostView]:
    host, port = broker_address(broker)
    try:
        return asyncio.run(fleet_snapshot(host, port, prefix_filter=prefix, timeout_s=timeout_s))
    except (BalloondError, OSError, TimeoutError) as exc:
        raise FleetError(f"broker {broker}: {exc or 'no answer'}") from None


def send(broker: str, *, host: str, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    address, port = broker_address(broker)
    try:
        return asyncio.run(
            fleet_request(
                address, port, prefix=host_prefix(host), request=request, timeout_s=timeout_s
            )
        )
    except TimeoutError:
        raise FleetError(f"no reply from {host_prefix(host)} on {broker} (is it online?)") from None
    except (BalloondError, OSError) as exc:
        raise FleetError(f"broker {broker}: {exc}") from None


def summarise(hosts: Mapping[str, HostView]) -> list[dict[str, Any]]:
    """One dict per host: online, guests, active, reclaimed bytes, under pressure."""
    rows = []
    for prefix, view in sorted(hosts.items()):
        guests = list((view.guests or {}).values())
        reclaimed = sum(
            max(0, (g.get("boot_bytes") or 0) - (g.get("actual_bytes") or 0)) for g in guests
        )
        pressured = [
            g["name"]
            for g in guests
            if (g.get("last_decision") or {}).get("reason") in PRESSURE_REASONS
        ]
        rows.append(
            {
                "host": prefix,
                "online": view.online,
                "guests": len(guests),
                "active": sum(1 for g in guests if g.get("state") == "active"),
                "reclaimed_bytes": reclaimed,
                "under_pressure": pressured,
                "guest_names": sorted(g["name"] for g in guests),
            }
        )
    return rows


def format_fleet(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no balloond on this broker (nothing retained under the prefix)"
    head = ("HOST", "STATUS", "GUESTS", "ACTIVE", "RECLAIMED MiB", "UNDER PRESSURE")
    body = [
        (
            r["host"],
            {True: "online", False: "OFFLINE", None: "?"}[r["online"]],
            str(r["guests"]),
            str(r["active"]),
            fmt_mib(r["reclaimed_bytes"]),
            ", ".join(r["under_pressure"]) or "-",
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *body)
    ]
    offline = [r["host"] for r in rows if r["online"] is False]
    total = sum(r["guests"] for r in rows)
    reclaimed = sum(r["reclaimed_bytes"] for r in rows)
    pressured = sum(len(r["under_pressure"]) for r in rows)
    summary = (
        f"{len(rows)} hosts ({len(offline)} offline), {total} guests, "
        f"{fmt_mib(reclaimed)} MiB reclaimed, {pressured} under pressure"
    )
    return "\n".join([summary, "", *lines])
