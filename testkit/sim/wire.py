"""QMP on the wire, byte for byte the way QEMU 7.2 writes and checks it.

The simulator is only useful if a client cannot tell it from QEMU, so the details that
differ between "valid JSON" and "what QEMU sends" live here:

* Key order. QEMU keeps JSON objects in a hash table (QDict: 512 buckets, tdb hash, newest
  entry first within a bucket) and writes them in bucket order. That is why a reply reads
  ``{"return": ..., "id": 1}`` but an error ``{"id": 1, "error": ...}``, and why the greeting
  lists ``micro, minor, major``. :func:`encode` reproduces that order for any object built
  in QEMU's insertion order (checked against QEMU 7.2 for every reply the simulator sends).
* Separators ``", "`` and ``": "``, non-ASCII escaped, each message ended by CRLF.
* Input framing: QEMU's streamer cuts the byte stream into top-level values by brace depth,
  without needing newlines (:class:`JsonStreamSplitter`).
* Request checks and argument errors, with QEMU's messages (:func:`check_request`,
  :func:`parse_arguments`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: JSON values wider than this are refused by QEMU as "not an integer".
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_QDICT_BUCKETS = 512
_MAX_REQUEST_BYTES = 1 << 20


class QMPError(Exception):
    """A QMP error reply: QEMU's error class and description."""

    def __init__(self, desc: str, *, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.error_class = error_class
        self.desc = desc


class _NoId:
    def __repr__(self) -> str:
        return "NO_ID"


#: A request without an "id" member (``None`` is a valid id: JSON null).
NO_ID: Any = _NoId()


@functools.lru_cache(maxsize=4096)
def _bucket(key: str) -> int:
    # QEMU's qdict.c tdb_hash(), reduced modulo QDICT_BUCKET_MAX.
    data = key.encode()
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, c in enumerate(data):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % _QDICT_BUCKETS


def qdict_order(obj: Any) -> Any:
    """``obj`` with every dict reordered as QEMU would iterate it (insertion order in)."""
    if isinstance(obj, dict):
        keyed = sorted(enumerate(obj), key=lambda ik: (_bucket(ik[1]), -ik[0]))
        return {k: qdict_order(obj[k]) for _, k in keyed}
    if isinstance(obj, list):
        return [qdict_order(v) for v in obj]
    return obj


def encode(obj: Any) -> bytes:
    """One QMP message as QEMU sends it: QDict key order, QEMU's spacing, CRLF."""
    return json.dumps(qdict_order(obj)).encode("ascii") + b"\r\n"


def response(result: Any, request_id: Any = NO_ID) -> dict[str, Any]:
    """A success reply, ``id`` echoed when the request had one."""
    rsp: dict[str, Any] = {"return": result}
    if request_id is not NO_ID:
        rsp["id"] = request_id
    return rsp


def error_response(err: QMPError, request_id: Any = NO_ID) -> dict[str, Any]:
    """An error reply, ``id`` echoed when the request had one."""
    rsp: dict[str, Any] = {"error": {"class": err.error_class, "desc": err.desc}}
    if request_id is not NO_ID:
        rsp["id"] = request_id
    return rsp


class JsonStreamSplitter:
    """Cuts bytes from a QMP client into complete top-level JSON texts.

    Like QEMU's json-streamer it counts braces and brackets outside strings, so several
    requests may share a line and one request may span several reads. A bare token at the
    top level (``garbage``, ``42``) or a stray closer is handed on alone, to fail parsing.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._in_str = False
        self._escape = False
        self._bare = False

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the texts it completed, oldest first."""
        out: list[bytes] = []
        for byte in data:
            ch = chr(byte)
            if self._bare:
                if ch in ' \t\r\n{}[]"':
                    out.append(bytes(self._buf))
                    self._reset()
                else:
                    self._buf.append(byte)
                    continue
            if self._in_str:
                self._buf.append(byte)
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_str = False
                    if self._depth == 0:
                        out.append(bytes(self._buf))
                        self._reset()
                continue
            if self._depth == 0 and ch in " \t\r\n":
                continue
            self._buf.append(byte)
            if ch == '"':
                self._in_str = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth <= 0:
                    out.append(bytes(self._buf))
                    self._reset()
            elif self._depth == 0:
                self._bare = True
            if len(self._buf) > _MAX_REQUEST_BYTES:
                out.append(b"")  # fails to parse: QEMU also drops an over-long token
                self._reset()
        return out

    def _reset(self) -> None:
        self._buf.clear()
        self._depth = 0
        self._in_str = False
        self._escape = False
        self._bare = False


def parse_text(text: bytes) -> Any:
    """Decode one text from the splitter; QMPError with QEMU's prefix if it is not JSON."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        word = text.decode("utf-8", "replace")
        if word and (word[0].isalpha() or word[0] == "_"):
            raise QMPError(f"JSON parse error, invalid keyword '{word}'") from exc
        if isinstance(exc, json.JSONDecodeError):
            reason = exc.msg[0].lower() + exc.msg[1:]
        else:
            reason = "invalid UTF-8 sequence"
        raise QMPError(f"JSON parse error, {reason}") from exc


@dataclass(frozen=True, slots=True)
class Request:
    """A checked QMP request."""

    command: str
    arguments: dict[str, Any]
    id: Any
    oob: bool


def request_id(obj: Any) -> Any:
    """The ``id`` to echo for ``obj`` (NO_ID when none or when obj is not an object)."""
    if isinstance(obj, dict) and "id" in obj:
        return obj["id"]
    return NO_ID


def check_request(obj: Any, *, oob_enabled: bool) -> Request:
    """QEMU's qmp_dispatch_check_obj(): QMPError with its message for a malformed request.

    Members are checked in QDict order, so with several problems the one QEMU names wins.
    """
    if not isinstance(obj, dict):
        raise QMPError("QMP input must be a JSON object")
    exec_key: str | None = None
    for key in qdict_order(obj):
        value = obj[key]
        if key == "execute" or (key == "exec-oob" and oob_enabled):
            if not isinstance(value, str):
                raise QMPError(f"QMP input member '{key}' must be a string")
            if exec_key is not None:
                raise QMPError(f"QMP input member '{key}' clashes with '{exec_key}'")
            exec_key = key
        elif key == "arguments":
            if not isinstance(value, dict):
                raise QMPError("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise QMPError(f"QMP input member '{key}' is unexpected")
    if exec_key is None:
        raise QMPError("QMP input lacks member 'execute'")
    return Request(
        command=obj[exec_key],
        arguments=obj.get("arguments", {}),
        id=request_id(obj),
        oob=exec_key == "exec-oob",
    )


ArgKind = Literal["int", "str", "bool", "any", "capabilities"]


@dataclass(frozen=True, slots=True)
class Param:
    """One declared argument of a command, in the schema's order."""

    name: str
    kind: ArgKind
    optional: bool = False


_TYPE_NAMES = {"int": "integer", "str": "string", "bool": "boolean", "capabilities": "array"}


def is_int64(value: Any) -> bool:
    """True for a JSON integer QEMU accepts as int64 (not bool, not float, in range)."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX
    )


def _check_value(name: str, value: Any, *, kind: ArgKind) -> None:
    ok = {
        "int": is_int64(value),
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "any": True,
        "capabilities": isinstance(value, list),
    }[kind]
    if not ok:
        raise QMPError(f"Invalid parameter type for '{name}', expected: {_TYPE_NAMES[kind]}")
    if kind == "capabilities":
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise QMPError(f"Invalid parameter type for '{name}[{i}]', expected: string")
            if item != "oob":
                # QEMU names list elements 'null' in this message.
                raise QMPError(f"Parameter 'null' does not accept value '{item}'")


def parse_arguments(args: dict[str, Any], params: Sequence[Param]) -> dict[str, Any]:
    """Check ``args`` against ``params`` as QEMU's input visitor does, in its order:
    each declared member (missing, then type), then anything undeclared."""
    for p in params:
        if p.name not in args:
            if not p.optional:
                raise QMPError(f"Parameter '{p.name}' is missing")
            continue
        _check_value(p.name, args[p.name], kind=p.kind)
    declared = {p.name for p in params}
    for key in qdict_order(args):
        if key not in declared:
            raise QMPError(f"Parameter '{key}' is unexpected")
    return args
