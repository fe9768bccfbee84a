"""How the simulated OSCC puts an answer on the wire, as awkwardly as a servlet container.

By default an answer is one write with a Content-Length, as aiohttp sends it. With
`pieces` > 1 it is sent ``Transfer-Encoding: chunked`` in that many writes, split at even
offsets (so JSON breaks mid-token), `gap` seconds apart: a client that takes the first
read for the whole answer sees half of it. Error pages look like Tomcat's; redirects carry
a Location. A client that hangs up before the answer is complete (it timed out) is no
error for the simulator: the work is done, the answer is lost, as on a real server.
"""

from __future__ import annotations

import asyncio
import html
import itertools
from http import HTTPStatus

from aiohttp import web

from bridge import logs

_log = logs.get_logger("bridge.simulator")

# What Apache Tomcat 9 serves for an uncaught exception or an unavailable webapp.
_TOMCAT_PAGE = (
    '<!doctype html><html lang="en"><head><title>HTTP Status {status} \u2013 {phrase}</title>'
    '<style type="text/css">body {{font-family:Tahoma,Arial,sans-serif;}} h1, h2, h3, b '
    "{{color:white;background-color:#525D76;}} h1 {{font-size:22px;}} .line "
    "{{height:1px;background-color:#525D76;border:none;}}</style></head><body>"
    '<h1>HTTP Status {status} \u2013 {phrase}</h1><hr class="line" /><p><b>Type</b> '
    "Exception Report</p><p><b>Message</b> {message}</p><p><b>Description</b> The server "
    "encountered an unexpected condition that prevented it from fulfilling the request."
    '</p><hr class="line" /><h3>Apache Tomcat/9.0.83</h3></body></html>'
)
_MOVED_PAGE = (
    "<html><head><title>{status} {phrase}</title></head><body><h1>{phrase}</h1>"
    '<p>The document has moved <a href="{location}">here</a>.</p></body></html>'
)


def error_page(status: int, message: str = "") -> str:
    """A Tomcat-like HTML error page for `status`."""
    phrase = _phrase(status)
    text = html.escape(message or f"{phrase} (simulated)")
    return _TOMCAT_PAGE.format(status=status, phrase=phrase, message=text)


def moved_page(status: int, location: str) -> str:
    """The small HTML body servers send with a redirect."""
    return _MOVED_PAGE.format(status=status, phrase=_phrase(status), location=html.escape(location))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def split(body: bytes, pieces: int) -> list[bytes]:
    """`body` in `pieces` parts of (nearly) equal length; fewer when it is shorter."""
    pieces = max(1, min(pieces, len(body)))
    bounds = [len(body) * i // pieces for i in range(pieces + 1)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


async def send(
    request: web.Request,
    body: bytes,
    *,
    status: int = 200,
    content_type: str = "application/json",
    charset: str | None = None,
    headers: dict[str, str] | None = None,
    pieces: int = 1,
    gap: float = 0.0,
) -> web.StreamResponse:
    """Answer `request` with `body`, in one write or in `pieces` chunked writes."""
    if pieces <= 1:
        return web.Response(
            status=status, body=body, content_type=content_type, charset=charset, headers=headers
        )
    response = web.StreamResponse(status=status, headers=headers)
    response.content_type = content_type
    if charset is not None:
        response.charset = charset
    response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        for n, piece in enumerate(split(body, pieces)):
            if n and gap > 0:
                await asyncio.sleep(gap)
            await response.write(piece)
        await response.write_eof()
    except ConnectionError:
        _log.debug("sim.client_hung_up", path=request.path, why="before the answer was complete")
    return response
