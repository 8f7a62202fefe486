# Copyright: snpguard.cvm contributors
# SPDX-License-Identifier: Apache-2.0
"""The HTTP connection layer under uvicorn, bounded against hostile clients.

uvicorn's httptools protocol accepts headers of any size and count and never times out
a client that sends its request slowly; a few hundred such connections exhaust a
worker's file descriptors.  ``BoundedHttpProtocol`` (uvicorn's ``http=`` class) adds:

* a header budget: bytes (counted as they arrive, before the parser buffers them) and
  count, answered with 431;  an URL budget, answered with 414;
* a deadline for the request head (from the connection or the first byte of a
  keep-alive request) and one for the body (a base plus the declared length at a
  minimum rate), answered with 408 and a closed connection;
* a cap on concurrent connections per client address in this worker (503).

``new_event_loop`` (uvicorn's ``loop=``) makes the event loop give TLS handshakes a short
deadline too (asyncio's default is 60 s).  The limits come from the server settings in
the environment (``config.ENV_SETTINGS``), which ``run.serve`` sets for every worker.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import ENV_SETTINGS, Settings


@dataclass(frozen=True)
class TransportLimits:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    min_body_rate: int = 64 << 10  # bytes per second a body may not fall below
    max_header_bytes: int = 32 << 10
    max_headers: int = 100
    max_url_bytes: int = 8 << 10
    max_connections_per_address: int = 64
    tls_handshake_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> TransportLimits:
        return cls(header_timeout=settings.header_timeout, body_timeout=settings.body_timeout,
                   min_body_rate=settings.min_body_rate, max_header_bytes=settings.max_header_bytes,
                   max_headers=settings.max_headers, max_connections_per_address=settings.max_connections_per_address,
                   tls_handshake_timeout=settings.tls_handshake_timeout)


_limits: TransportLimits | None = None


def current_limits() -> TransportLimits:
    """The limits of this process (from the settings in the environment, else the defaults)."""
    global _limits
    if _limits is None:
        text = os.environ.get(ENV_SETTINGS)
        _limits = TransportLimits.from_settings(Settings.from_json(text)) if text else TransportLimits()
    return _limits


def _response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": reason, "message": message}}).encode()
    return (f"HTTP/1.1 {status} {reason.replace('_', ' ')}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


HEADERS_TOO_LARGE = _response(431, "headers_too_large", "request headers too large or too many")
URL_TOO_LONG = _response(414, "url_too_long", "request URL too long")
REQUEST_TIMEOUT = _response(408, "request_timeout", "the request was not received in time")
TOO_MANY_CONNECTIONS = _response(503, "too_many_connections", "too many connections from this address")

# States of a connection between the protocol's callbacks.
_HEAD, _BODY, _APP, _IDLE = range(4)


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, URL, time and per-address budgets."""

    #: open connections per client address in this process
    per_address: collections.Counter[str] = collections.Counter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = current_limits()
        self._state = _IDLE
        self._head_bytes = 0
        self._header_count = 0
        self._header_bytes = 0
        self._url_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._address: str | None = None
        self._refused = False

    # -- connection ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._address = self.client[0] if self.client else None
        if self._address is not None:
            self.per_address[self._address] += 1
            if self.per_address[self._address] > self.limits.max_connections_per_address:
                self._refuse(TOO_MANY_CONNECTIONS)
                return
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._address is not None:
            self.per_address[self._address] -= 1
            if self.per_address[self._address] <= 0:
                del self.per_address[self._address]
            self._address = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._state == _IDLE:
            self._start_head()
        counting = self._state == _HEAD
        super().data_received(data)
        if counting and self._state == _HEAD and not self._refused:
            # Still inside the head after this chunk: all of it counts (the parser buffers it).
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._refuse(HEADERS_TOO_LARGE)

    # -- parser callbacks --------------------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        if self._url_bytes > self.limits.max_url_bytes:
            self._refuse(URL_TOO_LONG)
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        # A head that arrived in one chunk is only seen here, header by header.
        self._header_count += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers or (
                self._header_bytes + self._url_bytes > self.limits.max_header_bytes):
            self._refuse(HEADERS_TOO_LARGE)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._cancel_timer()
        self._state = _BODY
        declared = 0
        for name, value in self.headers:
            if name == b"content-length" and value.isdigit():
                declared = int(value)
        deadline = self.limits.body_timeout + declared / max(1, self.limits.min_body_rate)
        self._timer = self.loop.call_later(deadline, self._timed_out)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._cancel_timer()
        self._state = _APP
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._state = _IDLE
        super().on_response_complete()

    # -- budgets ----------------------------------------------------------------------------------
    def _start_head(self) -> None:
        self._state = _HEAD
        self._head_bytes = self._header_count = self._header_bytes = self._url_bytes = 0
        self._cancel_timer()
        self._timer = self.loop.call_later(self.limits.header_timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._state in (_HEAD, _BODY) and not self.transport.is_closing():
            started = self.cycle is not None and self.cycle.response_started
            if self.cycle is not None:
                # The application (if it runs) sees a disconnect, never a partial body as complete.
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self._refuse(None if started else REQUEST_TIMEOUT)

    def _refuse(self, response: bytes | None) -> None:
        """Answer (unless a response already started) and close; the rest of the input is ignored."""
        if self._refused:
            return
        self._refused = True
        self._cancel_timer()
        if response is not None and not (self.cycle is not None and self.cycle.response_started):
            self.transport.write(response)
        self.transport.close()


def _bounded_loop_class(base: type[asyncio.AbstractEventLoop]) -> type[asyncio.AbstractEventLoop]:
    class BoundedLoop(base):  # type: ignore[valid-type, misc]
        """An event loop whose TLS servers give each handshake ``tls_handshake_timeout``."""

        async def create_server(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", current_limits().tls_handshake_timeout)
            return await super().create_server(*args, **kwargs)

    return BoundedLoop


def _loop_base() -> type[asyncio.AbstractEventLoop]:
    """uvloop when installed (as uvicorn's "auto" chooses), else asyncio's selector loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop
        return asyncio.SelectorEventLoop
    return uvloop.Loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvicorn's ``loop=`` hook (a custom loop is named by its factory, called without arguments)."""
    return _bounded_loop_class(_loop_base())()


HTTP_PROTOCOL = f"{__name__}:BoundedHttpProtocol"
LOOP_FACTORY = f"{__name__}:new_event_loop"
