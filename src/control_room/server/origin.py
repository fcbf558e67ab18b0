"""Pure Origin checks for WebSocket upgrades (a browser page on another site is refused)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Final
from urllib.parse import urlsplit

ANY_ORIGIN: Final = "*"
DEFAULT_PORTS: Final = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalise(origin: str) -> str | None:
    """`scheme://host:port` in lower case with the port made explicit; None if unparsable."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if not scheme or not host:
        return None
    if port is None:
        port = DEFAULT_PORTS.get(scheme)
    if port is None:
        return None
    if ":" in host:  # IPv6 literal: keep its brackets
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def _host_port(host_header: str, scheme: str) -> str | None:
    """The `host:port` of a Host header, port made explicit from the page's scheme."""
    return normalise(f"{scheme}://{host_header}")


class OriginPolicy:
    """Which `Origin`s may open the socket: `ALLOWED_ORIGINS`, or the service's own.

    No `Origin` (a non-browser client) is allowed: the header is a browser's promise, and
    other clients can send anything. With no list, only the service's own origin is: the
    Origin's host and port equal the Host header's (the page was served by this service,
    whatever name it was reached by). Otherwise the Origin must be listed (`*` allows
    any). `Origin: null` (sandboxed frames, local files) matches only a `null` entry.
    """

    def __init__(self, allowed: Collection[str] = ()) -> None:
        self.any = ANY_ORIGIN in allowed
        self.null = "null" in allowed
        self.listed = frozenset(n for n in map(normalise, allowed) if n is not None)

    def allows(self, origin: str | None, host: str | None) -> bool:
        """True when an upgrade with this `Origin` (and `Host`) may proceed."""
        if origin is None or self.any:
            return True
        if origin.strip() == "null":
            return self.null
        wanted = normalise(origin)
        if wanted is None:
            return False
        if self.listed or self.null:
            return wanted in self.listed
        if not host:
            return False
        scheme = wanted.partition("://")[0]
        # The page's scheme stands for the connection's: behind TLS termination the
        # service sees http while the page says https; host and port identify the site.
        return _host_port(host, scheme) == wanted
