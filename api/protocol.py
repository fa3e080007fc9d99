"""`ReadDeadlineProtocol`: uvicorn's HTTP protocol with a deadline for reading each request.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but it has no limit on
how long a request may take to arrive: a connection that sends nothing, or headers without
their end, or a body shorter than its Content-Length, stays open forever (one held its
connection indefinitely). Here each request must arrive whole, from its first byte (or the
connection's opening) to the end of its body, within `read_timeout_s`; otherwise the server
answers 408 (when no response has begun) and closes the connection.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_BODY = b'{"detail":"the request did not arrive in time"}'
TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))


class ReadDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose requests must arrive whole within `read_timeout_s`."""

    read_timeout_s: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection; its first request must arrive within the deadline."""
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def on_message_begin(self) -> None:
        """A request starts: it must be whole by the deadline."""
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        """The request arrived whole: no deadline until the next one begins."""
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(TIMEOUT_RESPONSE)
        self.transport.close()


def with_read_timeout(read_timeout_s: float) -> type[ReadDeadlineProtocol]:
    """The protocol class for uvicorn's `http=` with this deadline."""
    return type("ReadDeadlineProtocol", (ReadDeadlineProtocol,), {"read_timeout_s": read_timeout_s})
