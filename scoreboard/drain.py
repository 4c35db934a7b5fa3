"""The graceful drain of a process that was asked to stop (SIGTERM, or its parent gone).

`Drain.begin` is called first: from then on `/readyz` answers 503 so that a load balancer stops
sending new connections, and every HTTP response carries `Connection: close`. After
`server.drain_delay_s` the listener stops accepting, closes idle keep-alive connections and the
live feed's WebSockets (1012, "service restart": reconnect elsewhere), and lets the requests in
flight finish; `http_drained` is set when they have. Only then do the actors stop, the publisher
after the last request that needs it, the consumer before the scorer that acknowledges what it
delivered.
"""

from __future__ import annotations

import trio


class Drain:
    """One process's drain: asked for once, watched by the HTTP server and `/readyz`."""

    def __init__(self) -> None:
        self.requested = trio.Event()
        self.http_drained = trio.Event()

    def begin(self) -> None:
        self.requested.set()

    @property
    def draining(self) -> bool:
        return self.requested.is_set()
