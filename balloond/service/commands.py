"""The command layer shared by ``balloonctl`` (control socket) and MQTT.

A request is a JSON object with an ``op``; it is validated by a pydantic model here, so a
bad payload becomes a :class:`~balloond.core.errors.RequestError` with a stable ``code`` and a
message naming what is wrong, whatever transport carried it. Every request gets exactly
one reply::

    {"ok": true, "result": ...}
    {"ok": false, "error": {"code": "unknown_guest", "message": "no guest named 'x'"}}

Operations: ``status`` (all guests, or one), ``set`` (manual target, optional hold),
``pause``, ``resume``, ``policy`` (switch a guest's policy), ``explain``, ``reload``.
Sizes are ``"512MiB"``-style strings or integer bytes; durations are seconds or ``"10m"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from balloond.core.errors import (
    BadConfigError,
    NotPermittedError,
    OutOfBoundsError,
    RequestError,
    UnknownGuestError,
    UnknownOpError,
)
from balloond.core.ops import MAX_REQUEST_BYTES, OPS, error_reply, request_id
from balloond.core.units import MiB, fmt_size, parse_duration, parse_size
from balloond.service.guest import GuestController, Intent, Mode

log = logging.getLogger("balloond.service.commands")
#: How long an operator command waits for its intent to be on disk before it answers.
SAVE_TIMEOUT_S = 10.0

if TYPE_CHECKING:
    from balloond.service.daemon import Daemon

#: The smallest manual target accepted, whatever the policy says: below this a Linux
#: guest cannot run.
ABSOLUTE_MIN_BYTES = 64 * MiB


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Echoed in the reply; MQTT 3.1.1 clients match replies by it.
    id: Annotated[str, Field(max_length=128)] | int | None = None


class StatusReq(_Req):
    op: Literal["status"]
    guest: str | None = None


class SetReq(_Req):
    op: Literal["set"]
    guest: str
    size: int | str
    hold: float | str | None = None  # seconds or "10m"; None: until resumed

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        if isinstance(v, str):
            parse_size(v)  # raises ValueError with a clear message
        elif v <= 0:
            raise ValueError("size must be positive")
        return v

    @field_validator("hold")
    @classmethod
    def _hold(cls, v: float | str | None) -> float | str | None:
        if v is not None:
            parse_duration(v)
        return v

    def size_bytes(self) -> int:
        return parse_size(self.size) if isinstance(self.size, str) else self.size


class PauseReq(_Req):
    op: Literal["pause", "resume"]
    guest: str | None = None
    all: bool = False


class PolicyReq(_Req):
    op: Literal["policy"]
    guest: str
    policy: str | None = None  # None: back to the policy the config assigns


class ExplainReq(_Req):
    op: Literal["explain"]
    guest: str


class TimelineReq(_Req):
    op: Literal["timeline"]
    guest: str
    #: How far back, seconds or "1h"; None: all the timeline keeps.
    since: float | str | None = None

    @field_validator("since")
    @classmethod
    def _since(cls, v: float | str | None) -> float | str | None:
        if v is not None:
            parse_duration(v)
        return v


class ReloadReq(_Req):
    op: Literal["reload"]


Request = Annotated[
    StatusReq | SetReq | PauseReq | PolicyReq | ExplainReq | TimelineReq | ReloadReq,
    Field(discriminator="op"),
]
_REQUEST = TypeAdapter(Request)


def parse_request(payload: bytes | str | dict[str, Any]) -> Request:
    """Validate a request; raise RequestError naming what is wrong."""
    if isinstance(payload, bytes | str):
        if len(payload) > MAX_REQUEST_BYTES:
            raise RequestError(f"request too large ({len(payload)} bytes > {MAX_REQUEST_BYTES})")
        try:
            payload = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: deeply nested arrays ("[[[[...") within the size limit.
            raise RequestError(f"bad JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise RequestError("a request is a JSON object with an 'op'")
    op = payload.get("op")
    if op not in OPS:
        raise UnknownOpError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    try:
        return _REQUEST.validate_python(payload)
    except ValidationError as exc:
        raise RequestError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"] if not str(p).endswith("Req"))
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


class Commands:
    """Executes validated requests against a running :class:`~balloond.service.daemon.Daemon`.

    ``allowed`` restricts the operations (e.g. MQTT configured read-only).
    """

    def __init__(self, daemon: Daemon, *, allowed: Iterable[str] = OPS) -> None:
        self.daemon = daemon
        self.allowed = frozenset(allowed)

    async def handle(self, payload: bytes | str | dict[str, Any]) -> dict[str, Any]:
        """Parse, check, execute; always returns exactly one reply object."""
        rid = request_id(payload)
        try:
            req = parse_request(payload)
            if req.op not in self.allowed:
                raise NotPermittedError(f"operation {req.op!r} is not permitted here")
            result = await self.execute(req)
        except RequestError as exc:
            return error_reply(exc, rid)
        reply: dict[str, Any] = {"ok": True, "result": result}
        if rid is not None:
            reply["id"] = rid
        return reply

    async def _saved(self) -> None:
        """Answer only once the operator's intent is on disk (it survives a crash), or
        after SAVE_TIMEOUT_S of a disk that does not answer (it is in force meanwhile)."""
        try:
            async with asyncio.timeout(SAVE_TIMEOUT_S):
                await self.daemon.intents_changed()
        except TimeoutError:
            log.warning("operator state not on disk after %.0fs; saved when it is", SAVE_TIMEOUT_S)

    def _guest(self, name: str) -> GuestController:
        try:
            return self.daemon.guests[name]
        except KeyError:
            raise UnknownGuestError(f"no guest named {name!r}") from None

    def _targets(self, req: PauseReq) -> list[GuestController]:
        if req.all == (req.guest is not None):
            raise RequestError(f"{req.op}: name one guest or give all=true")
        return list(self.daemon.guests.values()) if req.all else [self._guest(req.guest or "")]

    async def execute(self, req: Request) -> Any:
        d = self.daemon
        if isinstance(req, StatusReq):
            if req.guest is not None:
                return self._guest(req.guest).status()
            return d.status()
        if isinstance(req, SetReq):
            ctrl = self._guest(req.guest)
            size = req.size_bytes()
            check_bounds(ctrl, size)
            hold = parse_duration(req.hold) if req.hold is not None else None
            ctrl.set_intent(
                Intent(
                    mode=Mode.MANUAL,
                    manual_target_bytes=size,
                    hold_until=time.time() + hold if hold else None,
                    policy_override=ctrl.intent.policy_override,
                )
            )
            await self._saved()
            return ctrl.status()
        if isinstance(req, PauseReq):
            changed = []
            for ctrl in self._targets(req):
                mode = Mode.PAUSED if req.op == "pause" else Mode.AUTO
                ctrl.set_intent(Intent(mode=mode, policy_override=ctrl.intent.policy_override))
                changed.append(ctrl.name)
            await self._saved()
            return {"guests": changed, "mode": "paused" if req.op == "pause" else "auto"}
        if isinstance(req, PolicyReq):
            ctrl = self._guest(req.guest)
            if req.policy is not None and req.policy not in d.config.policies:
                known = ", ".join(sorted(d.config.policies))
                raise RequestError(f"no policy named {req.policy!r}; known: {known}")
            ctrl.set_intent(
                Intent(
                    mode=ctrl.intent.mode,
                    manual_target_bytes=ctrl.intent.manual_target_bytes,
                    hold_until=ctrl.intent.hold_until,
                    policy_override=req.policy,
                )
            )
            d.refresh_policy(ctrl)
            await self._saved()
            return ctrl.status()
        if isinstance(req, ExplainReq):
            return explain(self._guest(req.guest))
        if isinstance(req, TimelineReq):
            return timeline(self._guest(req.guest), since=req.since)
        if isinstance(req, ReloadReq):
            error = d.reload()
            if error is not None:
                raise BadConfigError(f"reload refused, old config kept: {error}")
            return {"reloaded": str(d.config_path) if d.config_path else None}
        raise RequestError(f"unhandled op {req.op!r}")  # pragma: no cover


def check_bounds(ctrl: GuestController, size: int) -> None:
    """A manual target must lie within what the guest can take."""
    boot = ctrl.link.boot_bytes
    policy = ctrl.policy
    low = max(ABSOLUTE_MIN_BYTES, policy.min_bytes if policy else 0)
    high = policy.max_bytes if policy else boot
    if high is None:
        raise RequestError(f"guest {ctrl.name!r} is not connected; its bounds are unknown")
    if not low <= size <= high:
        raise OutOfBoundsError(
            f"{fmt_size(size)} is outside {ctrl.name}'s bounds {fmt_size(low)}..{fmt_size(high)}"
        )


def timeline(ctrl: GuestController, *, since: float | str | None) -> dict[str, Any]:
    """The guest's timeline: points (sizes in bytes) and balloon changes, oldest first."""
    now = time.time()
    since_wall = 0.0 if since is None else now - parse_duration(since)
    tl = ctrl.timeline
    return {
        "guest": ctrl.name,
        "now": now,
        "interval_s": tl.interval_s,
        "span_s": tl.span_s,
        "boot_bytes": ctrl.link.boot_bytes,
        "points": tl.points(since_wall=since_wall),
        "changes": [c.as_dict() for c in tl.changes(since_wall=since_wall)],
    }


def explain(ctrl: GuestController) -> dict[str, Any]:
    """What the engine would decide for this guest now, and why."""
    decision = ctrl.explain()
    status = ctrl.status()
    if decision is None:
        why = (
            f"no decision: link is {ctrl.link.state.value}"
            if not ctrl.history
            else "no decision: waiting for stats"
        )
        return {**status, "decision": None, "explanation": why}
    return {
        **status,
        "decision": {
            "target_bytes": decision.target_bytes,
            "reason": str(decision.reason),
            "explanation": decision.explanation,
            "floor_bytes": decision.floor_bytes,
            "working_set_bytes": decision.working_set_bytes,
            "surge_reserve_bytes": decision.surge_reserve_bytes,
            "io_bps": decision.io_bps,
        },
        "explanation": decision.explanation,
        "note": (
            f"automation is {ctrl.intent.mode.value}: this is what the engine would do"
            if ctrl.intent.mode is not Mode.AUTO
            else None
        ),
    }
