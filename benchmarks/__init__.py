"""`python -m benchmarks` (`just bench`): the speed and memory figures of the real stack.

A fixed matrix of `scoreboard loadtest` runs, each against a freshly started `scoreboard serve`
process on backends of its own (a database cloned from a migrated template, a Redis key prefix,
queue names in the session's RabbitMQ vhost), limits off and the WebSocket caps raised; then the
adapters' microbenchmarks. Writes a dated JSON file and a markdown table under
`benchmarks/results/`. Nothing here asserts on timing: figures are printed and written, with
the machine and the configuration that produced them.
"""
