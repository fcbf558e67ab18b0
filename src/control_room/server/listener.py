"""Listening sockets that survive running out of file descriptors, and the connection budget.

Every connection costs a file descriptor. At start-up the service raises its soft file
limit to the hard one, and derives the default `MAX_CONNECTIONS` from it, keeping
`FD_HEADROOM` descriptors for everything else. If descriptors still run out (EMFILE),
`accept()` fails while the connection waits in the kernel's queue, and the listening
socket stays readable: asyncio's own loop then logs a traceback per attempt and spins
(observed: 19 % CPU and 2 MB of log in 6 s at a limit of 64). `Listener.accept` instead
sheds the queue: it closes a spare descriptor kept for the purpose, accepts one waiting
connection with it, answers 503 and closes it, reopens the spare, and reports "nothing to
accept" to the loop; one warning line per `EMFILE_LOG_INTERVAL_S`. (uvloop does the same
shedding inside libuv, silently.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
from collections.abc import Callable
from typing import Final

import msgspec

from control_room import logging as logs

FD_RESERVED_BASE: Final = 32
"""stdio, the event loop's epoll and self-pipe, the listening sockets (one per address
family), the spare descriptor below, secret files being re-read, DNS lookups."""
FD_RESERVED_UPSTREAM: Final = 16
"""The Jules client's pool (8) and a webhook connection per endpoint, with room to spare."""
FD_RESERVED_STORE: Final = 16
"""SQLite's database, WAL and shared-memory files, or PostgreSQL's pool (5)."""
FD_RESERVED_TRANSIENT: Final = 64
"""Dashboard files being sent (each open for the transfer) and refused connections
lingering for `REFUSAL_LINGER_S` after their 503."""
FD_HEADROOM: Final = (
    FD_RESERVED_BASE + FD_RESERVED_UPSTREAM + FD_RESERVED_STORE + FD_RESERVED_TRANSIENT
)
LISTEN_BACKLOG: Final = 1024
"""The kernel's queue of connections not yet accepted: a reconnect storm of clients after a
restart fits without SYN retries; Linux caps it at net.core.somaxconn anyway."""
EMFILE_SHED_MAX: Final = 64
"""Waiting connections shed per readiness event, so one wakeup cannot run unbounded."""
EMFILE_LOG_INTERVAL_S: Final = 10.0
"""At most one warning per 10 s while descriptors are exhausted, with the count shed."""
OVER_CAPACITY_RETRY_S: Final = 10
"""Retry-After of the 503 a refused connection gets: connections free up as clients come
and go (and as idle ones hit the request-head deadline)."""

log = logs.get("server")


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def default_max_connections(file_limit: int) -> int:
    """Connections the file limit allows once `FD_HEADROOM` is kept for everything else.

    With a small limit the headroom would leave nothing, so at least half the limit.
    """
    return max(file_limit - FD_HEADROOM, file_limit // 2, 1)


def cap_beyond_file_limit(max_connections: int, file_limit: int) -> bool:
    """True when `max_connections` cannot be reached before descriptors run out.

    That is past `default_max_connections`: the cap then leaves less than `FD_HEADROOM` (or
    half the limit) for the upstream, the store and files, and at the limit itself new
    clients are shed by the EMFILE path instead of getting the cap's orderly 503.
    """
    return max_connections > default_max_connections(file_limit)


def refusal_response(reason: str, retry_after: int = OVER_CAPACITY_RETRY_S) -> bytes:
    """A complete `503` HTTP response, sent without reading the request."""
    body = msgspec.json.encode(
        {
            "error": "over_capacity",
            "reason": reason,
            "message": f"the service is at its connection limit; retry after {retry_after} s",
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {retry_after}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


NO_FDS_RESPONSE: Final = refusal_response("no_file_descriptors")


class Listener(socket.socket):
    """A listening TCP socket whose `accept` sheds waiting connections on EMFILE.

    Only asyncio's loop calls `accept` on this object; uvloop accepts in libuv (and sheds
    there). `on_shed(count)` is called after each shedding round, for a metric.
    """

    # The standard signature: the socket module builds instances this way (e.g. in `dup`).
    def __init__(
        self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        super().__init__(family, type, proto, fileno)
        self.on_shed: Callable[[int], None] | None = None
        self._spare: int | None = _open_spare()
        self._sheds = logs.Occasional(EMFILE_LOG_INTERVAL_S)

    def accept(self) -> tuple[socket.socket, object]:
        """`socket.accept`; on EMFILE/ENFILE, shed the queue and raise BlockingIOError."""
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self._shed(exc.errno)
            # The loop's accept stops at BlockingIOError, quietly, until the next event.
            raise BlockingIOError(errno.EAGAIN, "connections shed: out of descriptors") from None

    def _shed(self, code: int) -> None:
        shed = 0
        for _ in range(EMFILE_SHED_MAX):
            if self._spare is not None:
                os.close(self._spare)
                self._spare = None
            try:
                conn, _ = super().accept()
            except OSError:
                break  # nothing waiting, or still no descriptor to accept with
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(NO_FDS_RESPONSE)  # a fresh socket's buffer takes it at once
            conn.close()
            shed += 1
            self._spare = _open_spare()
            if self._spare is None:
                break
        self._spare = self._spare if self._spare is not None else _open_spare()
        if self.on_shed is not None and shed:
            self.on_shed(shed)
        reported = self._sheds.count(shed)
        if reported is not None:
            log.warning(
                "Out of file descriptors; refusing new connections",
                extra={
                    "error": errno.errorcode.get(code, str(code)),
                    "shed": reported,
                    "fileLimit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                },
            )

    def close(self) -> None:
        """Close the socket and its spare descriptor."""
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None
        super().close()


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def bind(host: str, port: int, *, on_shed: Callable[[int], None] | None = None) -> list[Listener]:
    """Listening sockets for every address `host` resolves to, on `port` (0: any free port).

    With port 0 and several addresses, the later sockets reuse the first one's port.
    Raises OSError (EADDRINUSE and the like) with every socket closed again.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[Listener] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, _, _, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = Listener(family, socket.SOCK_STREAM)
            sock.on_shed = on_shed
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            bound_port: int = port
            if port == 0 and len(listeners) > 1:
                bound_port = listeners[0].getsockname()[1]
                address = (address[0], bound_port, *address[2:])
            try:
                sock.bind(address)
            except OSError as exc:  # name the address, as asyncio's create_server does
                raise OSError(
                    exc.errno, f"cannot bind {host or '*'} port {bound_port}: {exc.strerror}"
                ) from None
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners
