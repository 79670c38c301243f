"""Reading balloond's config file into frozen, validated values.

The file is TOML (``config/balloond.toml`` is the commented reference for every key). Each
section is a frozen pydantic model that rejects unknown keys; :func:`load_config` turns every
problem into one ``(key.path, message)`` pair of a single
:class:`~balloond.core.errors.ConfigError`, so ``balloond check`` can print them all at once.

Amounts of memory are written as people write them ("512MiB", "2GiB", "15%") and kept as
:class:`Amount` until the whole they are a share of is known: a policy's amounts are
percentages of a guest's boot memory, so :meth:`Policy.resolve` turns a policy into a
:class:`~balloond.core.policy.ResolvedPolicy` of plain ints once per guest, and the engine never
parses anything.

Named policies inherit every key they do not set from ``[policies.default]``, which itself
starts from the built-in defaults. Adding a top-level section is one field on :class:`Config`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import ErrorDetails, PydanticCustomError, core_schema

from balloond.core.errors import ConfigError
from balloond.core.ops import OPS, Op
from balloond.core.policy.inputs import Reclaim, ResolvedPolicy
from balloond.core.policy.observe import stale_after_s
from balloond.core.units import PERCENT_PATTERN, SIZE_PATTERN, MiB, parse_percent, parse_size

#: Guest and policy names: what a QMP socket's file stem usually is ("100", "web-01").
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_POLICY = "default"


# --- amounts ---------------------------------------------------------------------------


class Amount(NamedTuple):
    """A size in bytes, or a percentage of a whole that is known later (guest or host RAM).

    In a model it validates from ``"512MiB"``, ``"15%"`` or an int of bytes, and serializes
    back to the same short text. (A NamedTuple rather than a dataclass: pydantic serializes
    dataclass defaults field by field in the JSON schema, ignoring the custom serializer.)
    """

    n_bytes: int | None = None
    percent: float | None = None

    def of(self, whole_bytes: int) -> int:
        """The amount in bytes, taking percentages of ``whole_bytes``."""
        if self.percent is not None:
            return int(whole_bytes * self.percent / 100)
        assert self.n_bytes is not None
        return self.n_bytes

    def comparable(self, other: Amount) -> bool:
        """True when both are sizes or both are percentages."""
        return (self.percent is None) == (other.percent is None)

    @property
    def magnitude(self) -> float:
        """Bytes or percent, for comparing two comparable amounts."""
        return self.percent if self.percent is not None else float(self.n_bytes or 0)

    @property
    def is_zero(self) -> bool:
        return self.magnitude == 0

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        n = self.n_bytes or 0
        for unit, factor in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
            if n and n % factor == 0:
                return f"{n // factor}{unit}"
        return str(n)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _parse_amount,
            serialization=core_schema.plain_serializer_function_ser_schema(_dump_amount),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [dict(s) for s in _AMOUNT_SCHEMA["anyOf"]]}


def _size_error(value: object) -> PydanticCustomError:
    return PydanticCustomError(
        "size",
        "not a size: {value} (expected e.g. '512MiB', '2GiB' or '10%')",
        {"value": repr(value)},
    )


def _parse_amount(value: object) -> Amount:
    if isinstance(value, Amount):
        return value
    if isinstance(value, bool):
        raise _size_error(value)
    if isinstance(value, int):
        if value < 0:
            raise PydanticCustomError(
                "size", "a size cannot be negative: {value}", {"value": value}
            )
        return Amount(n_bytes=value)
    if isinstance(value, str):
        try:
            if value.strip().endswith("%"):
                return Amount(percent=parse_percent(value))
            return Amount(n_bytes=parse_size(value))
        except ValueError as exc:
            raise PydanticCustomError("size", "{reason}", {"reason": str(exc)}) from exc
    raise _size_error(value)


def _dump_amount(amount: Amount) -> int | str:
    text = str(amount)
    return int(text) if text.isdigit() else text


_AMOUNT_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "description": "bytes"},
        {
            "type": "string",
            "pattern": SIZE_PATTERN,
            "description": "a size such as '512MiB' or '2GiB'",
        },
        {
            "type": "string",
            "pattern": PERCENT_PATTERN,
            "description": "a percentage such as '15%'",
        },
    ]
}

#: A size ("512MiB", bytes as an int) or a percentage ("15%") of a whole known later.
SizeOrPercent = Amount


def _unbounded_or_amount(value: object) -> Amount | None:
    if value is None or value == "none":
        return None
    return _parse_amount(value)


#: Like SizeOrPercent, plus ``"none"``: no limit.
OptionalSizeOrPercent = Annotated[
    Amount | None,
    PlainValidator(_unbounded_or_amount),
    PlainSerializer(lambda a: "none" if a is None else _dump_amount(a)),
    WithJsonSchema({"anyOf": [*_AMOUNT_SCHEMA["anyOf"], {"const": "none"}]}),
]


def _pct(value: float) -> Amount:
    return Amount(percent=value)


def _mib(value: int) -> Amount:
    return Amount(n_bytes=value * MiB)


# --- paths and names -------------------------------------------------------------------


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise PydanticCustomError(
            "path", "must be an absolute path, got {path}", {"path": repr(str(path))}
        )
    return path


AbsPath = Annotated[Path, AfterValidator(_absolute)]


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        raise PydanticCustomError(
            "name",
            "not a valid name: {value} (letters, digits, '.', '_', '-'; up to 64; "
            "starting with a letter or digit)",
            {"value": repr(value)},
        )
    return value


Name = Annotated[str, AfterValidator(_name)]


def valid_guest_name(name: str) -> bool:
    """True if ``name`` may name a guest (discovery skips sockets whose stem is not)."""
    return NAME_RE.match(name) is not None


# --- sections --------------------------------------------------------------------------


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _audit_log(value: object) -> Path | None:
    if value is False or value == "":
        return None
    if isinstance(value, Path):
        return _absolute(value)
    if isinstance(value, str):
        return _absolute(Path(value))
    raise PydanticCustomError(
        "audit_log", "expected a path, or false to disable: {value}", {"value": repr(value)}
    )


def _no_default(schema: dict[str, Any]) -> None:
    # The default depends on state_dir; the description says so.
    schema.pop("default", None)


class DaemonConfig(_Section):
    """``[daemon]``: how the daemon itself runs."""

    poll_interval_s: float = Field(
        1.0, gt=0, le=3600, description="seconds between polls of each guest"
    )
    state_dir: AbsPath = Field(Path("/var/lib/balloond"), description="persistent state")
    runtime_dir: AbsPath = Field(Path("/run/balloond"), description="control socket, pid")
    dry_run: bool = Field(False, description="decide and log, but never move a balloon")
    log_format: Literal["text", "json", "journal", "auto"] = Field(
        "auto", description="auto: journal under systemd, else text"
    )
    #: None: no audit log. Unset means ``<state_dir>/audit.jsonl``.
    audit_log: Annotated[
        Path | None,
        PlainValidator(_audit_log),
        PlainSerializer(lambda p: False if p is None else str(p)),
        WithJsonSchema({"anyOf": [{"type": "string"}, {"const": False}]}),
    ] = Field(
        None,
        description="JSON lines of every balloon change; false disables; "
        "default <state_dir>/audit.jsonl",
        json_schema_extra=_no_default,
    )
    history_s: float | None = Field(
        None,
        gt=0,
        description="seconds of samples kept per guest for the engine; unset: 15, or what "
        "telling stale stats needs at this poll interval if that is more",
    )
    timeline_s: float = Field(
        3600.0, gt=0, le=7 * 86400, description="seconds of each guest's timeline kept for plots"
    )
    timeline_interval_s: float = Field(
        10.0, gt=0, le=3600, description="seconds between two points of a guest's timeline"
    )
    qmp_timeout_s: float = Field(
        3.0, gt=0, le=60, description="seconds one QMP call may take before the guest is hung"
    )
    device_recheck_s: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="seconds between looks for a balloon device in a guest that had none",
    )

    @property
    def history_len(self) -> int:
        """Samples kept per guest: :attr:`history_window_s` worth at ``poll_interval_s``
        (at least 2)."""
        return max(2, round(self.history_window_s / self.poll_interval_s))

    @property
    def history_window_s(self) -> float:
        """``history_s``, or when unset 15 s or the staleness window and one more poll,
        whichever is longer (the engine reads only the samples since the guest's previous
        report, which stale detection bounds; the trace recorder reads every 5 s)."""
        if self.history_s is not None:
            return self.history_s
        return max(15.0, stale_after_s(self.poll_interval_s) + self.poll_interval_s)

    @property
    def audit_path(self) -> Path | None:
        """Where the audit log goes (``audit_log`` resolved), None when it is disabled."""
        return self.audit_log

    @model_validator(mode="before")
    @classmethod
    def _default_audit_log(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("audit_log", True) is True:
            state_dir = data.get("state_dir", "/var/lib/balloond")
            # A bad state_dir is reported on its own; do not echo it here.
            if isinstance(state_dir, str | Path) and Path(state_dir).is_absolute():
                return {**data, "audit_log": str(Path(state_dir) / "audit.jsonl")}
        return data

    @field_validator("history_s")
    @classmethod
    def _history_covers_staleness(cls, value: float | None, info: ValidationInfo) -> float | None:
        poll_s = info.data.get("poll_interval_s")
        if value is not None and poll_s is not None and value < stale_after_s(poll_s):
            raise PydanticCustomError(
                "history",
                "must be at least {need}s: the engine needs that much history to tell "
                "stale stats (poll_interval_s = {poll})",
                {"need": f"{stale_after_s(poll_s):g}", "poll": f"{poll_s:g}"},
            )
        return value


class StaticGuest(_Section):
    """One ``[[guests]]`` entry: a guest balloond manages by name and QMP socket."""

    name: Name
    qmp: AbsPath = Field(description="QMP unix socket of the guest")
    shared: bool = Field(
        False, description="other clients use the socket too: connect for each cycle only"
    )


def _libvirt_uri(uri: str) -> str:
    if "://" not in uri:
        raise PydanticCustomError(
            "uri", "must be a libvirt URI such as qemu:///system, got {uri}", {"uri": repr(uri)}
        )
    return uri


def _absolute_glob(pattern: str) -> str:
    if not pattern.startswith("/"):
        raise PydanticCustomError(
            "path", "must be an absolute path pattern, got {pattern}", {"pattern": repr(pattern)}
        )
    return pattern


class DiscoveryConfig(_Section):
    """``[discovery]``: find guests by globbing for QMP sockets."""

    globs: tuple[Annotated[str, AfterValidator(_absolute_glob)], ...] = Field(
        (), description="globs of QMP sockets of balloond's own; the file stem names the guest"
    )
    shared_globs: tuple[Annotated[str, AfterValidator(_absolute_glob)], ...] = Field(
        (), description="globs of QMP sockets other clients use too (connected per cycle)"
    )
    rescan_interval_s: float = Field(5.0, gt=0, description="seconds between rescans")


class ProxmoxConfig(_Section):
    """``[proxmox]``: Proxmox VE's guests, through its own QMP sockets."""

    enabled: bool = Field(False, description="manage the VMs Proxmox VE runs on this host")
    config_dir: AbsPath = Field(
        Path("/etc/pve/qemu-server"), description="where the <vmid>.conf files are"
    )
    run_dir: AbsPath = Field(
        Path("/var/run/qemu-server"), description="where the <vmid>.qmp sockets are"
    )


class LibvirtConfig(_Section):
    """``[libvirt]``: domains run by libvirt daemons."""

    uris: tuple[Annotated[str, AfterValidator(_libvirt_uri)], ...] = Field(
        (), description="libvirt connection URIs, e.g. qemu:///system; none: libvirt off"
    )
    domains: tuple[str, ...] = Field(
        ("*",), description="domain-name globs to manage (others are left alone)"
    )
    workers: int = Field(
        8, ge=1, le=64, description="threads for libvirt's blocking calls (all guests share)"
    )


class HostConfig(_Section):
    """``[host]``: what balloond keeps for the host itself."""

    reserve: SizeOrPercent = Field(
        _pct(10), description="host MemAvailable to keep free; a % is of host RAM"
    )

    def reserve_bytes(self, host_total_bytes: int) -> int:
        return self.reserve.of(host_total_bytes)


#: The longest path a unix socket can have on Linux (sun_path is 108 bytes with its NUL).
MAX_UNIX_PATH_BYTES = 107


def _socket_path(path: Path) -> Path:
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise PydanticCustomError(
            "path",
            "a unix socket path can have at most {limit} bytes: {path}",
            {"limit": MAX_UNIX_PATH_BYTES, "path": repr(str(path))},
        )
    return path


class ControlConfig(_Section):
    """``[control]``: the unix socket ``balloonctl`` talks to."""

    socket: Annotated[AbsPath, AfterValidator(_socket_path)] | None = Field(
        None, description="control socket path; default <runtime_dir>/control.sock"
    )

    def socket_path(self, runtime_dir: Path) -> Path:
        """The socket's path, ``<runtime_dir>/control.sock`` unless set."""
        return self.socket if self.socket is not None else runtime_dir / "control.sock"


def parse_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9847"`` or ``"[::1]:9847"`` -> (host, port); raises ValueError."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"not an address: {text!r} (expected e.g. '127.0.0.1:9847')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"put an IPv6 address in brackets: {text!r} (e.g. '[::1]:9847')")
    if not port_text.isdigit():
        raise ValueError(f"bad port in {text!r}")
    port = int(port_text)
    if not 0 <= port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def _host_port(value: str) -> str:
    try:
        parse_host_port(value)
    except ValueError as exc:
        raise PydanticCustomError("address", "{reason}", {"reason": str(exc)}) from exc
    return value


class MetricsConfig(_Section):
    """``[metrics]``: the Prometheus endpoint."""

    enabled: bool = Field(True, description="serve GET /metrics")
    address: Annotated[str, AfterValidator(_host_port)] = Field(
        "127.0.0.1:9847", description="HOST:PORT to listen on; [::1]:9847 for IPv6"
    )


# --- mqtt ------------------------------------------------------------------------------

#: What ``[mqtt] allow`` may name: the command layer's operations (balloond.core.ops).
MqttOp = Op
MQTT_OPS = OPS


def _mqtt_protocol(value: object) -> object:
    # `protocol = 5`, a TOML integer, means the same as `protocol = "5"`.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _topic_prefix(value: str) -> str:
    if not value or value.startswith(("/", "$")) or value.endswith("/"):
        raise PydanticCustomError(
            "topic", "a topic prefix must not be empty, start with '/' or '$', or end with '/'"
        )
    if any(c in value for c in "+#\x00"):
        raise PydanticCustomError("topic", "a topic prefix cannot contain '+', '#' or NUL")
    return value


def _hostname() -> str:
    return re.sub(r"[/+#\x00]", "_", socket.gethostname()) or "localhost"


class MqttConfig(_Section):
    """``[mqtt]``: state, events and commands over an MQTT broker; off when absent."""

    host: str = Field("localhost", min_length=1, description="broker host name or address")
    port: int | None = Field(None, ge=1, le=65535, description="unset: 1883, or 8883 with TLS")
    client_id: str | None = Field(
        None, min_length=1, max_length=128, description="unset: balloond-<hostname>"
    )
    username: str | None = Field(None, description="unset: connect without credentials")
    password: SecretStr | None = Field(None, description="inline; prefer password_file")
    password_file: AbsPath | None = Field(None, description="file holding the password")
    password_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="variable holding the password"
    )
    tls: bool = Field(False, description="TLS with the system's CAs (implied by ca_file)")
    ca_file: AbsPath | None = Field(None, description="CA bundle that signed the broker")
    cert_file: AbsPath | None = Field(None, description="client certificate (PEM)")
    key_file: AbsPath | None = Field(None, description="its key, unless in cert_file")
    topic_prefix: Annotated[str, AfterValidator(_topic_prefix)] | None = Field(
        None, description="unset: balloond/<hostname>"
    )
    protocol: Annotated[Literal["auto", "5", "3.1.1"], BeforeValidator(_mqtt_protocol)] = Field(
        "auto", description="auto: v5, or 3.1.1 if the broker refuses v5"
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="seconds between pings")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of every publish and subscription")
    state_interval_s: float = Field(
        5.0, ge=0, le=3600, description="least seconds between two states of one guest"
    )
    allow: tuple[MqttOp, ...] = Field(MQTT_OPS, description="operations the cmd topic may run")
    timeout_s: float = Field(10.0, gt=0, le=300, description="limit on each broker call")
    reconnect_max_s: float = Field(
        60.0, ge=1, le=3600, description="longest wait between reconnect attempts"
    )
    max_queued_events: int = Field(
        1000, ge=1, le=1_000_000, description="events kept while the broker is slow or away"
    )

    @field_validator("allow")
    @classmethod
    def _dedupe(cls, value: tuple[MqttOp, ...]) -> tuple[MqttOp, ...]:
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        sources = [
            key
            for key in ("password", "password_file", "password_env")
            if getattr(self, key) is not None
        ]
        problem = None
        if len(sources) > 1:
            problem = f"give one of password, password_file, password_env, not {sources}"
        elif sources and self.username is None:
            problem = f"{sources[0]} needs a username"
        elif self.key_file is not None and self.cert_file is None:
            problem = "key_file needs cert_file (the client certificate)"
        if problem is not None:
            raise PydanticCustomError("mqtt", "{problem}", {"problem": problem})
        return self

    @property
    def tls_enabled(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls_enabled else 1883

    def effective_prefix(self) -> str:
        return self.topic_prefix or f"balloond/{_hostname()}"

    def effective_client_id(self) -> str:
        return self.client_id or f"balloond-{_hostname()}"


class Policy(_Section):
    """``[policies.NAME]``: how balloond treats the guests assigned to it.

    Percentages are of the guest's boot memory. See ``config/balloond.toml`` for each key.
    """

    min_size: SizeOrPercent = Field(_mib(256), description="the guest never goes below this")
    max_size: SizeOrPercent = Field(_pct(100), description="the guest never goes above this")
    free_low: SizeOrPercent = Field(_pct(15), description="deflate when available is below")
    free_high: SizeOrPercent = Field(_pct(25), description="inflate when available is above")
    cache_floor: SizeOrPercent = Field(_mib(64), description="available memory always kept")
    max_inflate_step: SizeOrPercent = Field(_mib(128), description="largest inflate per poll")
    max_deflate_step: OptionalSizeOrPercent = Field(
        None,
        description="largest deflate per poll; none: unbounded",
        json_schema_extra={"default": "none"},
    )
    min_change: SizeOrPercent = Field(_mib(16), description="skip smaller changes")
    cooldown_s: float = Field(30.0, ge=0, description="no inflate this long after a deflate")
    external_backoff_s: float = Field(
        300.0, ge=0, description="no inflate this long after someone else moved the balloon"
    )
    stale_release_s: float = Field(
        30.0,
        gt=0,
        description="give back what balloond took after this long without fresh guest stats",
    )
    refault_threshold: SizeOrPercent = Field(
        _mib(1),
        description=(
            "per second: refaults (disk reads) this far above the guest's own rate soon "
            "after an inflate stop it and keep a working-set floor; 0: off"
        ),
    )
    refault_window_s: float = Field(
        60.0, gt=0, description="how long after an inflate a rise in refaults is blamed on it"
    )
    working_set_halflife_s: float = Field(
        1800.0, gt=0, description="the working-set floor halves this often"
    )
    surge_reserve_max: SizeOrPercent = Field(
        _pct(25),
        description=(
            "cap of the surge reserve (fastest recent fall of available memory times the "
            "time to react, kept above the floor); 0: off"
        ),
    )
    surge_halflife_s: float = Field(600.0, gt=0, description="the surge reserve halves this often")
    weight: int = Field(100, ge=1, le=10000, description="share kept under host pressure")
    reclaim: Reclaim = Field(Reclaim.IDLE, description="when memory may be taken")

    @field_validator("min_size", "max_size", "max_inflate_step")
    @classmethod
    def _positive(cls, value: Amount, info: ValidationInfo) -> Amount:
        if value.is_zero:
            hint = (
                ' (use reclaim = "off" to stop inflating)'
                if info.field_name == ("max_inflate_step")
                else ""
            )
            raise PydanticCustomError("positive", "must be above zero{hint}", {"hint": hint})
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Policy:
        problems = []
        for low, high in (("free_low", "free_high"), ("min_size", "max_size")):
            a: Amount = getattr(self, low)
            b: Amount = getattr(self, high)
            strict = low == "free_low"
            if a.comparable(b) and (
                a.magnitude >= b.magnitude if strict else a.magnitude > b.magnitude
            ):
                relation = "below" if strict else "at most"
                problems.append(f"{low} ({a}) must be {relation} {high} ({b})")
        if problems:
            raise PydanticCustomError("policy", "{problems}", {"problems": "; ".join(problems)})
        return self

    def resolve(self, boot_bytes: int, *, name: str = DEFAULT_POLICY) -> ResolvedPolicy:
        """This policy in bytes for a guest with ``boot_bytes`` of RAM.

        Where percentages and sizes mix so that the file could not be checked, the result is
        made consistent here: ``max_size`` is at most the boot size, ``min_size`` at most
        ``max_size`` (both whole MiB, rounded inward), ``free_high`` at least
        ``free_low + max(min_change, 1MiB)``, and both steps at least ``min_change``.
        """
        # Bounds in whole MiB, so every target the engine derives from them is one too.
        max_b = max(min(self.max_size.of(boot_bytes), boot_bytes) // MiB * MiB, MiB)
        min_b = min(-(-max(self.min_size.of(boot_bytes), 1) // MiB) * MiB, max_b)
        min_change = self.min_change.of(boot_bytes)
        low = self.free_low.of(boot_bytes)
        high = max(self.free_high.of(boot_bytes), low + max(min_change, MiB))
        inflate_step = max(self.max_inflate_step.of(boot_bytes), min_change, 1)
        deflate_step = (
            None
            if self.max_deflate_step is None
            else max(self.max_deflate_step.of(boot_bytes), min_change, 1)
        )
        return ResolvedPolicy(
            name=name,
            boot_bytes=boot_bytes,
            min_bytes=min_b,
            max_bytes=max_b,
            free_low_bytes=low,
            free_high_bytes=high,
            cache_floor_bytes=self.cache_floor.of(boot_bytes),
            max_inflate_step_bytes=inflate_step,
            max_deflate_step_bytes=deflate_step,
            min_change_bytes=min_change,
            cooldown_s=self.cooldown_s,
            external_backoff_s=self.external_backoff_s,
            stale_release_s=self.stale_release_s,
            refault_threshold_bps=self.refault_threshold.of(boot_bytes),
            refault_window_s=self.refault_window_s,
            working_set_halflife_s=self.working_set_halflife_s,
            surge_reserve_max_bytes=self.surge_reserve_max.of(boot_bytes),
            surge_halflife_s=self.surge_halflife_s,
            weight=self.weight,
            reclaim=self.reclaim,
        )


def _policy_fields(table: Any) -> Any:
    """A policy table as a dict of the keys it sets (a Policy object counts its set keys)."""
    if isinstance(table, Policy):
        return {key: getattr(table, key) for key in table.model_fields_set}
    return table


class Config(_Section):
    """The whole config file. A new section is one more field here."""

    daemon: DaemonConfig = DaemonConfig()
    guests: tuple[StaticGuest, ...] = Field((), description="guests named by hand")
    discovery: DiscoveryConfig = DiscoveryConfig()
    proxmox: ProxmoxConfig = ProxmoxConfig()
    libvirt: LibvirtConfig = LibvirtConfig()
    host: HostConfig = HostConfig()
    control: ControlConfig = ControlConfig()
    metrics: MetricsConfig = MetricsConfig()
    mqtt: MqttConfig | None = Field(None, description="MQTT state, events, commands; off if absent")
    policies: dict[Name, Policy] = Field(
        default_factory=lambda: {DEFAULT_POLICY: Policy()},
        description="policies by name; 'default' always exists",
    )
    assign: dict[str, str] = Field(
        default_factory=dict, description="guest-name glob -> policy, first match wins"
    )

    @model_validator(mode="before")
    @classmethod
    def _inherit_default(cls, data: Any) -> Any:
        """Fill each named policy's unset keys from ``default`` (and make sure it exists)."""
        if not isinstance(data, Mapping):
            return data
        policies = data.get("policies", {})
        if not isinstance(policies, Mapping):
            return data
        base = _policy_fields(policies.get(DEFAULT_POLICY, {}))
        if not isinstance(base, Mapping):
            return data
        merged: dict[str, Any] = {DEFAULT_POLICY: base}
        for name, raw in policies.items():
            if name != DEFAULT_POLICY:
                table = _policy_fields(raw)
                merged[name] = {**base, **table} if isinstance(table, Mapping) else table
        return {**data, "policies": merged}

    @model_validator(mode="after")
    def _cross_check(self) -> Config:
        # Problems that span sections. Raised as ConfigError (pydantic passes it through)
        # so each gets its own key path.
        problems: list[tuple[str, str]] = []
        names: dict[str, int] = {}
        sockets: dict[Path, int] = {}
        for i, guest in enumerate(self.guests):
            if guest.name in names:
                problems.append(
                    (
                        f"guests[{i}].name",
                        f"duplicate guest name {guest.name!r} (also guests[{names[guest.name]}])",
                    )
                )
            if guest.qmp in sockets:
                problems.append(
                    (
                        f"guests[{i}].qmp",
                        f"socket {str(guest.qmp)!r} already used by guests[{sockets[guest.qmp]}]",
                    )
                )
            names.setdefault(guest.name, i)
            sockets.setdefault(guest.qmp, i)
        for pattern, policy in self.assign.items():
            if policy not in self.policies:
                known = ", ".join(sorted(self.policies))
                problems.append(
                    (
                        _key_path(("assign", pattern)),
                        f"unknown policy {policy!r} (defined: {known})",
                    )
                )
        if problems:
            raise ConfigError(f"{len(problems)} problem(s) in the config", problems=problems)
        return self

    def policy_name_for(self, guest_name: str) -> str:
        """The policy a guest gets: the first ``[assign]`` glob that matches, else default."""
        for pattern, policy in self.assign.items():
            if fnmatch.fnmatchcase(guest_name, pattern):
                return policy
        return DEFAULT_POLICY

    def resolve_policy(self, *, guest_name: str, boot_bytes: int) -> ResolvedPolicy:
        """The guest's policy in bytes for its boot size."""
        name = self.policy_name_for(guest_name)
        return self.policies[name].resolve(boot_bytes, name=name)


# --- loading ---------------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_path(loc: tuple[int | str, ...]) -> str:
    """``('policies', 'web', 'free_low')`` -> ``policies.web.free_low``; quotes odd keys."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for an error in a dict key
            continue
        else:
            key = part if _BARE_KEY.match(part) else '"' + part.replace('"', '\\"') + '"'
            out += f".{key}" if out else key
    return out


#: Error types raised here with a complete message of their own.
_OWN_ERRORS = frozenset({"size", "path", "name", "audit_log", "history", "positive", "policy"})


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key missing"
    msg = err["msg"]
    value = err.get("input")
    if kind not in _OWN_ERRORS and not isinstance(value, Mapping | list | tuple):
        shown = repr(value)
        msg = f"{msg} (got {shown[:60]}{'...' if len(shown) > 60 else ''})"
    return msg


def _problems(exc: ValidationError, data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One (key path, message) per error, without the echoes of inherited default keys."""
    raw_policies = data.get("policies")
    raw_policies = raw_policies if isinstance(raw_policies, Mapping) else {}
    errors = exc.errors(include_url=False)
    in_default = {
        (tuple(e["loc"][2:]), _message(e))
        for e in errors
        if e["loc"][:2] == ("policies", DEFAULT_POLICY)
    }
    problems: list[tuple[str, str]] = []
    for err in errors:
        loc, msg = tuple(err["loc"]), _message(err)
        if len(loc) >= 2 and loc[0] == "policies" and loc[1] != DEFAULT_POLICY:
            own = raw_policies.get(loc[1])
            set_here = len(loc) > 2 and isinstance(own, Mapping) and loc[2] in own
            if not set_here and (loc[2:], msg) in in_default:
                continue
        problems.append((_key_path(loc), msg))
    return problems


def parse_config(data: Mapping[str, Any], *, source: str = "") -> Config:
    """Validate an already parsed config; raises ConfigError listing every problem."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = _problems(exc, data)
        raise ConfigError(
            f"{len(problems)} problem(s) in the config", source=source, problems=problems
        ) from exc
    except ConfigError as exc:
        exc.source = source
        raise


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file; raises ConfigError (syntax, I/O, values)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file: {exc}", source=source) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line N, column M)".
        message = f"TOML syntax error: {exc}"
        raise ConfigError(message, source=source, problems=[("", message)]) from exc
    return parse_config(data, source=source)


def config_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors (e.g. taplo, VS Code Even Better TOML)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **Config.model_json_schema(),
        "title": "balloond configuration",
    }
