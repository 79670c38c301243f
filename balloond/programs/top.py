"""``balloonctl top``: a live view of the guests, refreshed every second (textual).

One row per guest: its size, balloond's target and the memory available in it, a bar of
what its memory holds (used, page cache, free, and what the balloon took from its boot
memory), a sparkline of its size over the last minutes, its mode and its last balloon
change. A header with the host's memory, what balloond reclaimed and the guests under
pressure. Keys: ``s`` cycles the sort (name, size, available, reclaimed), ``/`` filters by
name, ``Escape`` clears the filter, ``q`` (or Ctrl-C) quits. Fits an 80x24 terminal.

The data comes from the control socket, one ``status`` request a second (and each guest's
``timeline`` once, to start its sparkline with history), in a worker thread so a slow
daemon never freezes the screen.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Input, Static

from balloond.core.units import MiB, fmt_mib, fmt_size

#: Refresh interval, seconds.
REFRESH_S = 1.0
#: Width of the memory bar and of the sparkline, in cells.
BAR_CELLS = 12
SPARK_CELLS = 10
#: Size samples kept per guest for the sparkline (one a second, a few minutes).
SPARK_SAMPLES = 300
_SPARKS = "▁▂▃▄▅▆▇█"
SORTS = ("name", "size", "available", "reclaimed")

Request = Callable[[dict[str, Any]], dict[str, Any]]


def memory_bar(guest: Mapping[str, Any], cells: int = BAR_CELLS) -> Text:
    """Used (red), page cache (yellow), free (green), ballooned (grey) out of boot memory."""
    boot = guest.get("boot_bytes") or guest.get("actual_bytes") or 0
    actual = guest.get("actual_bytes") or boot
    available = guest.get("available_bytes")
    cache = guest.get("cache_bytes") or 0
    if not boot or available is None:
        return Text("?" * cells, style="dim")
    used = max(0, actual - available)
    free = max(0, available - cache)
    parts = [
        (used, "red"),
        (min(cache, actual - used), "yellow"),
        (free, "green"),
        (max(0, boot - actual), "bright_black"),
    ]
    text = Text()
    filled = 0
    for i, (amount, style) in enumerate(parts):
        n = round(amount / boot * cells) if i < len(parts) - 1 else cells - filled
        n = max(0, min(n, cells - filled))
        text.append("█" * n if style != "bright_black" else "░" * n, style=style)
        filled += n
    return text


def sparkline(values: list[int], cells: int = SPARK_CELLS) -> str:
    """The last values squeezed into ``cells`` characters, scaled to their own range."""
    if not values:
        return ""
    step = max(1, len(values) // cells)
    picked = values[-cells * step :: step][-cells:]
    low, high = min(picked), max(picked)
    if high == low:
        return _SPARKS[3] * len(picked)
    return "".join(_SPARKS[round((v - low) / (high - low) * (len(_SPARKS) - 1))] for v in picked)


def last_action(guest: Mapping[str, Any], now: float) -> str:
    """``idle 12s``: the reason of the guest's last balloon change and how long ago."""
    action = guest.get("last_action")
    if not action:
        return "-"
    try:  # the audit record's time: UTC ISO 8601
        at = dt.datetime.fromisoformat(str(action.get("time"))).timestamp()
    except ValueError:
        return str(action.get("reason"))
    ago = max(0.0, now - at)
    when = (
        f"{ago:.0f}s" if ago < 120 else f"{ago / 60:.0f}m" if ago < 7200 else f"{ago / 3600:.0f}h"
    )
    return f"{action.get('reason')} {when}"


class TopApp(App[None]):
    """The live view (see the module docstring)."""

    TITLE = "balloond"
    CSS = """
    #header { height: 2; padding: 0 1; }
    #filter { height: 3; display: none; }
    #filter.shown { display: block; }
    DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("s", "sort", "sort"),
        Binding("slash", "filter", "filter"),
        Binding("escape", "clear_filter", "clear", show=False),
    ]

    def __init__(self, request: Request, *, refresh_s: float = REFRESH_S) -> None:
        super().__init__()
        self._request = request
        self._refresh_s = refresh_s
        self._sort = 0
        self._filter = ""
        self._sizes: dict[str, deque[int]] = {}
        self._status: dict[str, Any] | None = None
        self._error: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("connecting...", id="header")
        # Disabled (so never focused) until `/` opens it: keys go to the table.
        yield Input(placeholder="filter guests by name (Escape clears)", id="filter", disabled=True)
        table: DataTable[str | Text] = DataTable(cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer()

    async def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("GUEST", "SIZE", "TGT", "AVAIL", "MEMORY", "TREND", "MODE", "LAST")
        table.focus()
        await self._poll()
        self.set_interval(self._refresh_s, self._poll)

    async def _poll(self) -> None:
        try:
            status = await asyncio.to_thread(self._request, {"op": "status"})
        except Exception as exc:  # a dead daemon is shown, never a crash
            self._error = str(exc)
        else:
            if not self._status:
                await self._seed(status)
            self._status, self._error = status, None
            for g in status.get("guests", []):
                sizes = self._sizes.setdefault(g["name"], deque(maxlen=SPARK_SAMPLES))
                if g.get("actual_bytes") is not None:
                    sizes.append(int(g["actual_bytes"]) // MiB)
        self._render()

    async def _seed(self, status: Mapping[str, Any]) -> None:
        """Start each sparkline with the daemon's own timeline."""
        for g in status.get("guests", [])[:50]:
            try:
                tl = await asyncio.to_thread(
                    self._request, {"op": "timeline", "guest": g["name"], "since": "10m"}
                )
            except Exception:
                continue
            sizes = self._sizes.setdefault(g["name"], deque(maxlen=SPARK_SAMPLES))
            sizes.extend(p["size_bytes"] // MiB for p in tl.get("points", []))

    def _render(self) -> None:
        header = self.query_one("#header", Static)
        status = self._status
        if status is None:
            header.update(f"balloond: {self._error or 'no answer yet'}")
            return
        s = status.get("summary", {})
        host = status.get("host") or {}
        host_text = (
            f"host {fmt_size(host['available_bytes'])} of {fmt_size(host['total_bytes'])} free"
            if host
            else "host memory unknown"
        )
        trouble = f"   [red]{self._error}[/red]" if self._error else ""
        header.update(
            f"[b]{s.get('guests', 0)} guests[/b] ({s.get('active', 0)} active)   "
            f"reclaimed [b]{fmt_size(s.get('reclaimed_bytes', 0))}[/b]   "
            f"under pressure [b]{s.get('under_pressure', 0)}[/b]{trouble}\n"
            f"{host_text}   sort: {SORTS[self._sort]}"
            + (f"   filter: {self._filter}" if self._filter else "")
        )
        now = time.time()
        guests = [g for g in status.get("guests", []) if self._filter in g["name"]]
        guests.sort(key=self._sort_key, reverse=SORTS[self._sort] != "name")
        table = self.query_one(DataTable)
        table.clear()
        for g in guests:
            mode = str(g.get("mode", "?"))
            table.add_row(
                str(g["name"])[:14],
                fmt_mib(g.get("actual_bytes")),
                fmt_mib(g.get("target_bytes")),
                fmt_mib(g.get("available_bytes")),
                memory_bar(g),
                sparkline(list(self._sizes.get(g["name"], ()))),
                mode if g.get("state") == "active" else str(g.get("state")),
                last_action(g, now)[:16],
            )

    def _sort_key(self, g: Mapping[str, Any]) -> Any:
        kind = SORTS[self._sort]
        if kind == "name":
            return g["name"]
        if kind == "size":
            return g.get("actual_bytes") or 0
        if kind == "available":
            return g.get("available_bytes") or 0
        return (g.get("boot_bytes") or 0) - (g.get("actual_bytes") or 0)

    def action_sort(self) -> None:
        self._sort = (self._sort + 1) % len(SORTS)
        self._render()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.disabled = False
        box.add_class("shown")
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("shown")
        box.disabled = True
        self._filter = ""
        self.query_one(DataTable).focus()
        self._render()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._filter = event.value.strip()
        self._render()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()


def run(socket_path: Path, *, timeout_s: float, request: Callable[..., dict[str, Any]]) -> int:
    """Run the view until the user quits; the exit status."""

    def ask(req: dict[str, Any]) -> dict[str, Any]:
        return request(socket_path, req, timeout_s=timeout_s)

    TopApp(ask).run()
    return 0
