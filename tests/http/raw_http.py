"""A keep-alive HTTP/1.1 client over one raw socket that sends a request's head and body as
separate writes, the way real clients do: h11 frames the bytes, the test decides the timing."""

from __future__ import annotations

from dataclasses import dataclass

import h11
import trio

RECEIVE_BYTES = 65536


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def closes(self) -> bool:
        return "close" in self.headers.get("connection", "").lower()


class RawConnection:
    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, url: str) -> RawConnection:
        host, _, port = url.removeprefix("http://").partition(":")
        return cls(await trio.open_tcp_stream(host, int(port)), f"{host}:{port}")

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send_head(
        self, method: str, target: str, headers: dict[str, str], body_length: int | None = None
    ) -> None:
        fields = [("Host", self.host), *headers.items()]
        if body_length is not None:
            fields.append(("Content-Length", str(body_length)))
        await self.stream.send_all(
            self.h11.send(h11.Request(method=method, target=target, headers=fields))
        )

    async def send_body(self, chunk: bytes, *, end: bool = True) -> None:
        data = self.h11.send(h11.Data(data=chunk)) if chunk else b""
        if end:
            data += self.h11.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> RawResponse:
        await self.send_head(method, target, headers or {}, len(body) if body else None)
        await self.send_body(body)
        return await self.response()

    async def response(self) -> RawResponse:
        status, headers, body = 0, {}, bytearray()
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(RECEIVE_BYTES))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {name.decode(): value.decode() for name, value in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(f"unexpected {event!r}")
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return RawResponse(status, headers, bytes(body))

    async def closed_by_server(self) -> bool:
        """True once the server closed the socket (it sends nothing more)."""
        try:
            return await self.stream.receive_some(RECEIVE_BYTES) == b""
        except trio.BrokenResourceError:
            return True
