"""How the scale benchmark talks to the processes it starts (the simulated fleet, the floor
clients): one JSON object per line, requests ``{"op": NAME}`` on their stdin, answers on
their stdout. The benchmark's side is :class:`benchmarks.scale.FleetProcess`."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

Handler = Callable[[], dict[str, Any]]


def say(obj: dict[str, Any]) -> None:
    """Write one answer (or the first line: ``{"ready": N}``)."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def answer_requests(handlers: Mapping[str, Handler]) -> None:
    """Answer each request read on stdin with its handler's dict, until ``quit`` or the end
    of stdin; an unknown or unreadable request is answered with ``{"error": ...}``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            op = json.loads(line)["op"]
        except (ValueError, KeyError, TypeError) as exc:
            say({"error": f"not a request: {exc}"})
            continue
        if op == "quit":
            return
        handler = handlers.get(op)
        say(handler() if handler else {"error": f"unknown op {op!r}"})
