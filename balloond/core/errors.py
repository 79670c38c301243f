"""balloond's exception tree.

Every error balloond raises on purpose derives from :class:`BalloondError`. Library
exceptions (qemu.qmp, aiomqtt, OSError from sockets) are translated once, at the adapter
that calls the library, and chained with ``raise ... from exc``.

Whether trying again later can help is part of the class, so callers never have to
parse messages to decide::

    BalloondError
    ├── TemporaryError            try again later; the thing may come back
    │   ├── LinkError             a guest's QMP link failed
    │   │   ├── DisconnectedError     no QEMU at the socket, or it went away
    │   │   └── LinkTimeoutError      QEMU did not answer in time (hung, stopped, loaded)
    │   └── BrokerError           the MQTT broker is unreachable
    └── PermanentError            the same request will fail the same way
        ├── ConfigError           a config file or value is invalid
        ├── TraceError            a workload trace file is invalid (``balloond simulate``)
        ├── QMPCommandError       QEMU refused a command (carries the QMP error class)
        │   └── NoBalloonError        the guest has no virtio-balloon device
        ├── RequestError          a control request is malformed or not allowed (.code)
        │   ├── UnknownGuestError     no managed guest has that name
        │   ├── OutOfBoundsError      a size outside the guest's bounds
        │   ├── UnknownOpError        no such operation
        │   ├── NotPermittedError     an operation this transport does not allow
        │   ├── BadConfigError        reload refused: the config file is invalid
        │   └── InternalError         a bug cost one reply (see the log)
        └── LabError              the test lab could not build or boot a guest

``asyncio.CancelledError`` is never wrapped or swallowed.
"""

from __future__ import annotations


class BalloondError(Exception):
    """Root of every error balloond raises on purpose."""


class TemporaryError(BalloondError):
    """The operation failed now but may work if tried again later."""


class PermanentError(BalloondError):
    """The operation will fail the same way if tried again unchanged."""


class LinkError(TemporaryError):
    """A guest's QMP link failed."""


class DisconnectedError(LinkError):
    """QEMU is not listening on the socket, or the connection was lost."""


class LinkTimeoutError(LinkError):
    """QEMU did not answer within the caller's timeout."""


class BrokerError(TemporaryError):
    """The MQTT broker could not be reached or dropped the connection."""


class ConfigError(PermanentError):
    """A configuration file or value is invalid.

    ``problems`` holds one ``(key.path, message)`` pair per error found, so a checker can
    print all of them at once.
    """

    def __init__(
        self, message: str, *, source: str = "", problems: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.source = source
        self.problems: list[tuple[str, str]] = problems or []

    def lines(self) -> list[str]:
        """One ``SOURCE: key.path: message`` line per problem."""
        prefix = f"{self.source}: " if self.source else ""
        if not self.problems:
            return [f"{prefix}{self}"]
        return [
            f"{prefix}{path}: {msg}" if path else f"{prefix}{msg}" for path, msg in self.problems
        ]


class TraceError(PermanentError):
    """A workload trace file cannot be read or is not a valid ``balloond-trace/1``
    document; the message starts with the file's path."""


class QMPCommandError(PermanentError):
    """QEMU answered a command with an error."""

    def __init__(self, message: str, *, error_class: str = "GenericError") -> None:
        super().__init__(message)
        self.error_class = error_class


class NoBalloonError(QMPCommandError):
    """The guest has no virtio-balloon device (QMP DeviceNotActive)."""


class RequestError(PermanentError):
    """A control request (balloonctl, MQTT) is malformed or not allowed.

    ``code`` is a short stable token for machines (``bad_request``, ``unknown_guest``...).
    """

    code = "bad_request"


class UnknownGuestError(RequestError):
    """No managed guest has the requested name."""

    code = "unknown_guest"


class OutOfBoundsError(RequestError):
    """A requested size lies outside the guest's allowed range."""

    code = "out_of_bounds"


class UnknownOpError(RequestError):
    """The request names an operation balloond does not have."""

    code = "unknown_op"


class NotPermittedError(RequestError):
    """The operation exists but this transport's allow-list omits it."""

    code = "not_permitted"


class BadConfigError(RequestError):
    """A reload was asked for, but the config file is invalid (the old config stays)."""

    code = "bad_config"


class InternalError(RequestError):
    """A bug answered one request; the daemon's log has the traceback."""

    code = "internal"


class LabError(PermanentError):
    """The test lab could not build an image or boot a guest."""
