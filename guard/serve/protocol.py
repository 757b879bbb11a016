"""uvicorn's HTTP/1.1 protocol (h11) with guard's limits on connections, before the app sees them.

uvicorn has no deadline for a request's headers: a client that sends them a byte at a time
(slowloris), or opens a connection and sends nothing, holds it for ever. `GuardH11Protocol`

- gives every request `header_timeout` seconds from its first byte (or from the connection) to
  finish its headers, and the same to finish a body the app did not read; then it answers 408
  and closes the connection (silently, if nothing was sent at all);
- refuses a connection beyond `max_connections` open at once with a 503 and closes it;
- answers a request uvicorn cannot parse (a bad Content-Length, a header block over the limit)
  in the API's JSON error shape instead of uvicorn's plain text.

The body of a request the app reads has its own deadline in the app (`--body-timeout`).
"""

from __future__ import annotations

import json
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("guard.serve")


def error_bytes(status: int, reason: str, code: str, message: str, kind: str = "invalid_request_error") -> bytes:
    """A whole HTTP/1.1 response with the API's JSON error body; the connection closes after it."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def protocol_class(header_timeout: float, max_connections: int | None) -> type[H11Protocol]:
    """An H11Protocol subclass with these limits, for `uvicorn.Config(http=...)`."""
    # long: the subclass closes over the limits; each of its methods is short

    class GuardH11Protocol(H11Protocol):
        def connection_made(self, transport) -> None:
            self._header_timer = None
            self._seen_bytes = False
            super().connection_made(transport)
            if max_connections is not None and len(self.connections) > max_connections:
                log.warning("connection refused: too many open", extra={"max_connections": max_connections})
                message = f"the server has {max_connections} connections open (its limit); retry after a moment"
                transport.write(
                    error_bytes(503, "Service Unavailable", "too_many_connections", message, "server_error")
                )
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if data:
                self._seen_bytes = True
            super().data_received(data)
            if self.transport.is_closing():
                return
            if self._in_request():
                self._disarm()
            else:
                self._arm()  # between requests with bytes of the next one: its headers' clock runs

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            # uvicorn's keep-alive timer covers an idle connection; one with an unread body left
            # (the app answered without reading it) gets the header deadline for the rest
            if not self.transport.is_closing() and self.conn.their_state not in (h11.IDLE, h11.DONE):
                self._arm()

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            self.transport.write(
                error_bytes(400, "Bad Request", "invalid_http", f"the request is not valid HTTP/1.1 ({msg})")
            )
            self.transport.close()

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._timed_out)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self._in_request():
                return
            if self._seen_bytes and self.conn.our_state is h11.IDLE:  # no answer yet to this request
                log.info("request timed out before its headers were read", extra={"timeout_s": header_timeout})
                message = f"the request was not received within {header_timeout:g} s (the header timeout)"
                self.transport.write(error_bytes(408, "Request Timeout", "request_timeout", message))
            self.transport.close()

    return GuardH11Protocol
