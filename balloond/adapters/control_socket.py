"""The control socket: how ``balloonctl`` talks to a running balloond.

A unix stream socket (mode 0600, so only its owner, root under systemd, may connect) in the
runtime directory, ``/run/balloond/control.sock`` by default. Each request is one line of
JSON and gets one line of JSON back; requests and replies are those of
:mod:`balloond.service.commands`, the layer MQTT uses too, so both speak the same language::

    -> {"op": "set", "guest": "web", "size": 536870912, "hold": "10m"}
    <- {"ok": true, "result": {...}}

A client may send several requests on one connection. The server bounds each request's size,
drops a connection that stays silent too long, serves many clients at once up to a limit,
and answers garbage with an error reply instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from balloond.adapters.port import DaemonPort
from balloond.core.errors import PermanentError
from balloond.core.ops import MAX_REQUEST_BYTES, READ_ONLY_OPS, request_id

log = logging.getLogger("balloond.adapters.control_socket")

DEFAULT_SOCKET = Path("/run/balloond/control.sock")
#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT_S = 30.0
#: A client that does not read its reply within this long is dropped.
WRITE_TIMEOUT_S = 10.0
#: Connections served at once; more are told the daemon is busy and closed.
MAX_CLIENTS = 64
#: After a request too large to read, how much more of it is read and dropped, and for how
#: long, so the client gets to read its error reply.
DISCARD_BYTES = 16 * 1024 * 1024
DISCARD_S = 5.0


class ControlSocketError(PermanentError):
    """The control socket cannot be created (path taken, or another balloond owns it)."""


def _reply_line(reply: dict[str, Any]) -> bytes:
    return (json.dumps(reply, separators=(",", ":"), default=str) + "\n").encode()


def _error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def _peer(writer: asyncio.StreamWriter) -> str:
    """``pid 123 uid 0`` from SO_PEERCRED, for the log."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
    except (OSError, AttributeError, struct.error):
        return "unknown peer"
    return f"pid {pid} uid {uid}"


def bind_control_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` with mode 0600 from the start.

    A socket file left by a balloond that died (SIGKILL) is replaced; one that a live
    balloond answers on, or any other kind of file, is an error.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{path} exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise ControlSocketError(f"cannot probe {path}: {exc}") from exc
            log.info("removing stale control socket %s", path)
            path.unlink(missing_ok=True)
        else:
            raise ControlSocketError(f"{path}: another balloond is already listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Permissions on the socket inode before bind() become the file's mode: there is no
        # window in which another user could connect.
        os.fchmod(sock.fileno(), 0o600)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(MAX_CLIENTS)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ControlSocketError(f"cannot listen on {path}: {exc}") from exc
    return sock


class ControlAdapter:
    """Serves :mod:`balloond.service.commands` on a unix socket until ``stop`` is set."""

    name = "control-socket"

    def __init__(
        self,
        daemon: DaemonPort,
        *,
        path: Path = DEFAULT_SOCKET,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.path = path
        self.commands = daemon.commands()
        self.idle_timeout_s = idle_timeout_s
        self.max_clients = max_clients
        self._clients: set[asyncio.Task[Any]] = set()
        self._served = 0
        #: Set while the socket accepts connections.
        self.listening = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        sock = bind_control_socket(self.path)
        inode = os.stat(self.path).st_ino
        server = await asyncio.start_unix_server(
            self._client, sock=sock, limit=MAX_REQUEST_BYTES + 1
        )
        log.info("control socket listening on %s", self.path)
        self.listening.set()
        try:
            await stop.wait()
        finally:
            self.listening.clear()
            server.close()
            for task in list(self._clients):
                task.cancel()
            if self._clients:
                await asyncio.gather(*self._clients, return_exceptions=True)
            await server.wait_closed()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == inode:  # still ours, not a successor's
                    self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._served += 1
        task.set_name(f"control:client-{self._served}")
        self._clients.add(task)
        try:
            if len(self._clients) > self.max_clients:
                log.warning("control socket: more than %d clients; refusing one", self.max_clients)
                await self._send(writer, _error("busy", "too many clients; try again"))
                return
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading: nothing to answer
        except Exception:
            # A bug serving one client must cost only that connection, and say so.
            log.exception("control: serving %s failed", _peer(writer))
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                # Closing a socket whose peer vanished may raise anything OSError-like;
                # the connection is over either way.
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: str | None = None
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    line = await reader.readline()
            except TimeoutError:
                return
            except ValueError:
                # readline() found no newline within the limit and discarded the data.
                await self._send(
                    writer,
                    _error("bad_request", f"request too large (limit {MAX_REQUEST_BYTES} bytes)"),
                )
                if writer.can_write_eof():
                    writer.write_eof()  # the reply is all there is: the client sees EOF
                await _discard_rest(reader)
                return
            if not line:
                return  # EOF
            if not line.strip():
                continue
            reply = await self._handle(line)
            op = _op_of(line)
            if op is not None and op not in READ_ONLY_OPS:
                peer = peer or _peer(writer)
                outcome = "ok" if reply.get("ok") else reply.get("error", {}).get("message")
                log.info("control: %s from %s: %s", op, peer, outcome)
            await self._send(writer, reply)

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            return await self.commands.handle(line.strip())
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug in one command must cost only that reply, not the socket or the daemon.
            log.exception("control: request failed")
            reply = _error("internal", "internal error; see the daemon's log")
            rid = request_id(line)
            if rid is not None:
                reply["id"] = rid
            return reply

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(_reply_line(reply))
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await writer.drain()


async def _discard_rest(reader: asyncio.StreamReader) -> None:
    """Read and drop what a client still sends of a request that was too large, so that
    its writes do not fail and throw away the error reply before it reads it; up to
    :data:`DISCARD_BYTES` and :data:`DISCARD_S`, then the connection is closed anyway."""
    left = DISCARD_BYTES
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(DISCARD_S):
            while left > 0 and (chunk := await reader.read(min(left, 65536))):
                left -= len(chunk)


def _op_of(line: bytes) -> str | None:
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        return None
    op = obj.get("op") if isinstance(obj, dict) else None
    return op if isinstance(op, str) else None
