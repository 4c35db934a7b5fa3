"""The `scoreboard` command (contract §6): serve, migrate, verify, and the dead-letter tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from scoreboard.config import Config, ConfigError, load_config

log = logging.getLogger("scoreboard")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoreboard", description="Real-time leaderboard server")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default from config: 8000)")
    serve.add_argument("--role", choices=("all", "api", "worker"), help="which actors to run")

    commands.add_parser("migrate", help="create the database if needed and apply migrations")
    commands.add_parser(
        "verify",
        help="check score = sum of deltas and Redis = Postgres (embedded mode: the first only)",
    )

    failed = commands.add_parser("failed", help="actions that exhausted their attempts")
    failed_commands = failed.add_subparsers(dest="failed_command", required=True)
    listing = failed_commands.add_parser(
        "list", help="show dead-lettered actions with their reasons"
    )
    listing.add_argument("--limit", type=int, default=50)
    replay = failed_commands.add_parser(
        "replay", help="move dead-lettered actions back to the queue"
    )
    replay.add_argument("--limit", type=int, default=1000)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def apply_serve_arguments(config: Config, args: argparse.Namespace) -> Config:
    server: dict[str, object] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.role is not None:
        server["role"] = args.role
    return config.replace(server=server) if server else config


async def run_migrate(config: Config) -> int:
    from scoreboard.migrate import migrate_configured

    database, applied = await migrate_configured(config)
    print(
        f"{database}: migrations applied: {', '.join(applied) if applied else 'none (up to date)'}"
    )
    return 0


async def run_verify(config: Config) -> int:
    from scoreboard.backends import open_backends
    from scoreboard.verify import verify

    # Embedded mode's board lives in the server's memory; the one opened here is rebuilt from
    # the SQLite file, so only score = sum of deltas is checked there.
    async with open_backends(config, exclusive=False) as backends:
        report = await verify(backends.store, backends.board)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


async def run_failed(config: Config, args: argparse.Namespace) -> int:
    from scoreboard.backends import open_backends

    async with open_backends(config, exclusive=False) as backends:
        if args.failed_command == "list":
            for body, reason in await backends.broker.list_failed(args.limit):
                print(f"{reason}\t{body.decode(errors='replace')}")
        else:
            moved = await backends.broker.replay_failed(args.limit)
            print(f"replayed {moved} action(s)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        config = load_config()
        if args.command == "serve":
            config = apply_serve_arguments(config, args)
            _ = config.backend_mode  # a role the backends cannot run fails here, with its reason
    except ConfigError as exc:
        print(f"scoreboard: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from scoreboard.server import run_until_signalled

        return trio.run(run_until_signalled, config)
    if args.command == "migrate":
        return trio.run(run_migrate, config)
    if args.command == "verify":
        return trio.run(run_verify, config)
    return trio.run(run_failed, config, args)


if __name__ == "__main__":
    sys.exit(main())
