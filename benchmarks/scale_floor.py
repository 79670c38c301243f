"""The floor the scale benchmark measures the daemon against: the cheapest clients doing the
daemon's QMP traffic, in a process of their own.

``python -m benchmarks.scale_floor DIR MODE COMMANDS_PER_S QUERIES_PER_S`` connects to every
``DIR/*.sock`` (the simulated fleet) and, per guest, on a one-second grid at a phase of its
own, reads ``guest-stats``; across the fleet it also sends ``query-balloon`` and
``balloon`` (to a size that moves the balloon, so QEMU's events come back as they do to the
daemon) at the rates given (the daemon's, measured on the same fleet just before), to random
guests. MODE:

* ``qmp``: qemu.qmp's ``QMPClient`` trimmed as the daemon trims it: the daemon's own
  :class:`~balloond.adapters.qmp.LeanClient` (events handed straight to a no-op instead of
  the growing default listener; no pretty-printed DEBUG copies of every message; each
  request encoded once). What the daemon costs on top of this is the daemon's own.
* ``raw``: asyncio streams writing and reading JSON lines by hand: about the least Python
  can spend on this traffic (no QMP library at all).

No timeouts, no decisions, no books: only the traffic. It prints ``{"ready": N}`` once
connected, then ``{"polls": ..., "window_s": ...}`` for each ``window``/``report`` pair read
on stdin (JSON lines, as :mod:`benchmarks.scale_fleet`), and exits on ``quit``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from balloond.adapters.qmp import LeanClient
from benchmarks.pipe import answer_requests, say

STATS_ARGS = {"path": "/machine/peripheral/balloon0", "property": "guest-stats"}
#: Balloon targets the floor picks from: between half and all of a simulated guest's 1 GiB,
#: so that its commands move balloons as the daemon's do (and QEMU's BALLOON_CHANGE events
#: come back, as they do to the daemon).
BALLOON_VALUES = tuple(m << 20 for m in range(512, 1025, 64))


Call = Callable[[str, dict[str, Any] | None], Awaitable[Any]]


async def connect_qmp(path: Path) -> Call:
    client = LeanClient(path.stem, on_event=lambda msg: None)
    await client.connect(str(path))

    async def call(cmd: str, args: dict[str, Any] | None) -> Any:
        return await client.execute(cmd, args)

    return call


async def connect_raw(path: Path) -> Call:
    reader, writer = await asyncio.open_unix_connection(str(path))
    await reader.readline()  # the greeting
    lock = asyncio.Lock()

    async def call(cmd: str, args: dict[str, Any] | None) -> Any:
        msg = {"execute": cmd} if args is None else {"execute": cmd, "arguments": args}
        async with lock:
            writer.write(json.dumps(msg).encode() + b"\n")
            while True:
                reply = json.loads(await reader.readline())
                if "event" not in reply:
                    return reply.get("return")

    await call("qmp_capabilities", None)
    return call


class Floor:
    def __init__(self, commands_per_s: float, queries_per_s: float, n: int) -> None:
        self.p_command = commands_per_s / n
        self.p_query = queries_per_s / n
        self.polls = 0
        self.window_started = time.monotonic()

    def start_window(self) -> dict[str, Any]:
        self.polls, self.window_started = 0, time.monotonic()
        return {"ok": True}

    def report(self) -> dict[str, Any]:
        return {"polls": self.polls, "window_s": time.monotonic() - self.window_started}

    async def guest(self, call: Call, rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + rng.uniform(0, 1.0)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += 1.0
            await call("qom-get", STATS_ARGS)
            self.polls += 1
            if rng.random() < self.p_query:
                await call("query-balloon", None)
            if rng.random() < self.p_command:
                await call("balloon", {"value": rng.choice(BALLOON_VALUES)})


async def run(sockets: list[Path], mode: str, commands_per_s: float, queries_per_s: float) -> None:
    connect = connect_qmp if mode == "qmp" else connect_raw
    calls = await asyncio.gather(*(connect(path) for path in sockets))
    floor = Floor(commands_per_s, queries_per_s, len(calls))
    tasks = [
        asyncio.create_task(floor.guest(call, random.Random(i))) for i, call in enumerate(calls)
    ]
    gc.collect()
    gc.freeze()
    say({"ready": len(calls)})
    try:
        await answer_requests({"window": floor.start_window, "report": floor.report})
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    directory, mode = Path(sys.argv[1]), sys.argv[2]
    commands_per_s, queries_per_s = float(sys.argv[3]), float(sys.argv[4])
    if mode not in ("qmp", "raw"):
        sys.exit(f"mode must be qmp or raw, not {mode!r}")
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(sorted(directory.glob("*.sock")), mode, commands_per_s, queries_per_s))


if __name__ == "__main__":
    main()
