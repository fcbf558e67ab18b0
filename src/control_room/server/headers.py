"""Security headers on every HTTP answer: what a browser may load, frame and leak."""

from __future__ import annotations

from typing import Final

from aiohttp import web

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The dashboard's own policy (index.html repeats it in a meta tag) plus what only a header
can say: no page may frame it. `connect-src 'self'` covers the page's own ws:/wss: origin
in CSP Level 3 browsers."""
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: the headers above, except on a WebSocket's 101."""
    if response.status == 101:
        return
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
