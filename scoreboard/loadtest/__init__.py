"""`scoreboard loadtest`: a load generator that knows only the wire contract and the README.

It signs users in through the OAuth authorization code flow with PKCE, holds many authenticated
WebSockets in worker processes (a lean epoll reader per process), sends actions at an open-loop
rate over HTTP, over the WebSocket or both, measures what a player would see (action-to-screen
latency, updates per second, refusals) and what the server spends (CPU, memory), and ends with a
check that every accepted action was counted exactly once.
"""
