"""A guest's serial console as a command channel: send a shell command, get its result.

The guest runs a root shell on ttyS0, which QEMU exposes as a unix socket. A serial line
has no framing, so each command is wrapped in markers the shell prints around it; the
markers are built so that the shell's echo of the command line never matches them, and
a run only accepts its own markers, which makes output left over from an earlier command
(or an interrupted boot-time probe) harmless. stdout and stderr come back separately
(stderr goes through a file in the guest). One command runs at a time.

The shell reads through busybox's line editor, echo on. That is deliberate: with
``stty -echo`` ash reads with plain fgets, a SIGCHLD (a background job such as memhog
ending) interrupts the read, ash takes that for end of input and exits, and as PID 1 its
exit panics the guest. The editor does impose limits, which ``_command_lines`` works around.

Everything the console prints is also appended to a log file for post-mortems.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from balloond.core.errors import LabError

_INTERRUPT = b"\x03"  # ^C: the tty sends SIGINT to the command that overran its timeout
_READ_CHUNK = 65536
_TAIL_BYTES = 4096
_PIECE_CHARS = 700  # per line of a command in transit: well under busybox's 1023


class ConsoleTimeoutError(LabError):
    """A command did not finish on the guest console within its timeout."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a command run on the guest console produced. Carriage returns are removed."""

    command: str
    status: int
    stdout: str
    stderr: str


def shorten(command: str, limit: int = 120) -> str:
    """A command cut to a length that fits in an error message."""
    command = " ".join(command.split())
    return command if len(command) <= limit else f"{command[: limit - 3]}..."


def _command_lines(command: str, wrapper: str) -> str:
    """Shell input that sets ``$__c`` to ``command`` byte for byte, then runs ``wrapper``.

    busybox's line editor reads at most 1023 bytes per line and acts on tabs and escape
    characters, so the command travels as ANSI-C quoted pieces (``$'...'``) of printable
    ASCII, every other byte as a three-digit octal escape, appended line by line.
    """
    pieces: list[str] = []
    piece = ""
    for byte in command.encode():
        if byte in (0x27, 0x5C):  # ' and \
            token = "\\" + chr(byte)
        elif 0x20 <= byte < 0x7F:
            token = chr(byte)
        else:
            token = f"\\{byte:03o}"
        if len(piece) + len(token) > _PIECE_CHARS:
            pieces.append(piece)
            piece = ""
        piece += token
    pieces.append(piece)
    lines = [f"__c=$'{pieces[0]}'", *(f"__c=\"$__c\"$'{p}'" for p in pieces[1:])]
    lines[-1] += f"; {wrapper}"
    return "".join(f"{line}\n" for line in lines)


class SerialConsole:
    """The client end of one guest's console socket."""

    def __init__(self, *, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._token = secrets.token_hex(3)  # tells this connection's markers from older ones
        self._serial = 0
        self._lock = asyncio.Lock()
        self._buffer = bytearray()
        self._tail = bytearray()
        self._changed = asyncio.Event()
        self._eof = False
        self._log: BinaryIO | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    def __repr__(self) -> str:
        state = "closed" if self._eof or self._writer is None else "open"
        return f"<SerialConsole {self.name} {state}>"

    @property
    def closed(self) -> bool:
        return self._eof or self._writer is None

    async def connect(self, socket_path: Path) -> None:
        """Connect to QEMU's console socket (one attempt; LabError if nobody listens)."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise LabError(f"{self.name}: no console at {socket_path}") from exc
        self._writer = writer
        self._log = self.log_path.open("ab")
        self._reader_task = asyncio.create_task(
            self._read_forever(reader), name=f"lab-console-{self.name}"
        )

    async def run(self, command: str, *, timeout_s: float) -> CommandResult:
        """Run one shell command line in the guest and wait for it to finish.

        The command gets /dev/null as stdin (it must not read the console). It may be of
        any length, span lines, contain any bytes and start background jobs (whose output
        it should redirect). On timeout the command is interrupted with ^C and
        ConsoleTimeoutError is raised.
        """
        async with asyncio.timeout(timeout_s):
            await self._lock.acquire()
        try:
            self._serial += 1
            marker = f"@@{self._token}x{self._serial}"
            pattern = re.compile(
                rb"\n%(m)sB\n(.*?)\n%(m)sE (\d+)\n(.*?)\n%(m)sF\n" % {b"m": marker.encode()},
                re.DOTALL,
            )
            # The shell echoes these lines back; there each marker is followed by other text
            # than the newline it ends with when printed, so the echo never matches.
            lines = _command_lines(
                command,
                f'echo; echo {marker}B; eval "$__c" </dev/null 2>/tmp/.lab-err; __s=$?;'
                f" echo; echo {marker}E $__s; cat /tmp/.lab-err; echo; echo {marker}F",
            )
            self._buffer.clear()
            self._send(lines.encode())
            try:
                async with asyncio.timeout(timeout_s):
                    match = await self._wait_for(pattern)
            except TimeoutError:
                if not self.closed:
                    self._send(_INTERRUPT)
                raise ConsoleTimeoutError(
                    f"{self.name}: `{shorten(command)}` did not finish in {timeout_s:g} s"
                ) from None
            return CommandResult(
                command=command,
                status=int(match.group(2)),
                stdout=match.group(1).decode(errors="replace"),
                stderr=match.group(3).decode(errors="replace"),
            )
        finally:
            self._lock.release()

    def tail(self) -> str:
        """The last few KiB the console printed, for error messages."""
        return self._tail.decode(errors="replace")

    async def close(self) -> None:
        """Disconnect; idempotent. The guest's shell keeps running."""
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        if self._writer is not None:
            self._writer.close()
            # The peer may already be gone (QEMU killed): nothing left to flush then.
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._eof = True
        self._changed.set()

    def _send(self, data: bytes) -> None:
        if self._writer is None or self._eof:
            raise LabError(f"{self.name}: the console is closed (is QEMU still running?)")
        self._writer.write(data)

    async def _wait_for(self, pattern: re.Pattern[bytes]) -> re.Match[bytes]:
        while True:
            match = pattern.search(self._buffer)
            if match is not None:
                return match
            if self._eof:
                raise LabError(f"{self.name}: the console closed (QEMU exited?)")
            self._changed.clear()
            await self._changed.wait()

    async def _read_forever(self, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(_READ_CHUNK):
                if self._log is not None:
                    self._log.write(data)
                    self._log.flush()
                data = data.replace(b"\r", b"")
                if self._lock.locked():  # only a command in flight reads the buffer
                    self._buffer += data
                self._tail = (self._tail + data)[-_TAIL_BYTES:]
                self._changed.set()
        except (ConnectionError, OSError):
            pass  # QEMU went away: the same as end of file for us
        finally:
            self._eof = True
            self._changed.set()
