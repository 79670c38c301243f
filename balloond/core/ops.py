"""The operations a control request may name, and the envelope of a request and its reply.

The command layer (:mod:`balloond.service.commands`) executes them, ``[mqtt] allow`` in the
config names a subset of them, ``balloonctl`` sends them, and the control socket and MQTT
adapters carry them. Plain functions over JSON, so every layer can use them.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from balloond.core.errors import RequestError

#: One operation's name, as a request's ``op`` spells it.
Op = Literal["status", "set", "pause", "resume", "policy", "explain", "timeline", "reload"]
#: Every operation, in the order help texts list them.
OPS: tuple[Op, ...] = get_args(Op)
#: Operations that change nothing (not logged as commands).
READ_ONLY_OPS: frozenset[Op] = frozenset({"status", "explain", "timeline"})
#: The largest request accepted, on any transport.
MAX_REQUEST_BYTES = 64 * 1024


def request_id(payload: bytes | str | dict[str, Any]) -> str | int | None:
    """The ``id`` of a request, if one can be read even from an invalid request."""
    try:
        obj = json.loads(payload) if isinstance(payload, bytes | str) else payload
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None


def error_reply(exc: RequestError, rid: str | int | None = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"ok": False, "error": {"code": exc.code, "message": str(exc)}}
    if rid is not None:
        reply["id"] = rid
    return reply
