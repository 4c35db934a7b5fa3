"""`python -m benchmarks`: the speed and memory figures of the real stack (design §8).

The server runs in this process against backends of its own (a fresh database, a Redis key
prefix, a RabbitMQ vhost); the HTTP and WebSocket clients run in a separate process
(`benchmarks.loadgen`) so their CPU and memory are not counted as the server's. Nothing here
asserts on timing: the figures are printed, with the configuration that produced them.
"""
