"""A TCP proxy of a test's own between the app and a shared service, to simulate the service's
faults without touching the service (other test runs use it at the same time).

    proxy = FaultProxy("127.0.0.1", 5672)
    port = await nursery.start(proxy.serve)
    ... point the app at 127.0.0.1:port ...
    proxy.cut()        # the service is "down": connections dropped, new ones refused
    proxy.restore()    # it is back
    proxy.blackhole()  # the open connections go silent (bytes vanish); new ones work
    proxy.hold_replies()  # what the service sends waits in the proxy until `restore`
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import trio

PUMP_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    silent: bool = False


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._links: set[_Link] = set()
        self._down = False
        self._replies_flow = trio.Event()
        self._replies_flow.set()
        self.refused = 0  # connection attempts while cut
        self.accepted = 0
        self.port = 0  # set by whoever started `serve`

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on an ephemeral port of 127.0.0.1; reports the port as started."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port: int = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    def cut(self) -> None:
        """Drop every connection and refuse new ones until `restore`."""
        self._down = True
        for link in list(self._links):
            link.scope.cancel()

    def restore(self) -> None:
        self._down = False
        self._replies_flow.set()

    def hold_replies(self) -> None:
        """Forward what the app sends, but keep what the service answers until `restore`."""
        if self._replies_flow.is_set():
            self._replies_flow = trio.Event()

    def blackhole(self) -> None:
        """Open connections stay open but forward nothing, either way, from now on (a wedged
        link); new connections are forwarded as usual."""
        for link in self._links:
            link.silent = True

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self._down:
                self.refused += 1
                return
            self.accepted += 1
            link = _Link()
            self._links.add(link)
            try:
                with link.scope:
                    server = await trio.open_tcp_stream(*self._target)
                    async with server, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, link, nursery, False)
                        nursery.start_soon(self._pump, server, client, link, nursery, True)
            finally:
                self._links.discard(link)

    async def _pump(
        self,
        source: trio.SocketStream,
        sink: trio.SocketStream,
        link: _Link,
        nursery: trio.Nursery,
        replies: bool,
    ) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(PUMP_CHUNK):
                if replies:
                    await self._replies_flow.wait()
                if not link.silent:
                    await sink.send_all(data)
        nursery.cancel_scope.cancel()
