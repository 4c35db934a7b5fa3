"""The `scoreboard` command (docs/api.md, section 6): serve, migrate, verify, the dead-letter
tools, the audit trail, and the operator's OAuth tools (signing keys, clients, accounts)."""

from __future__ import annotations

import argparse
import getpass
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio

from scoreboard import clock
from scoreboard.anticheat.records import FLAG_KINDS
from scoreboard.config import Config, ConfigError, load_config
from scoreboard.loadtest.options import DESCRIPTION, Options, add_arguments
from scoreboard.wire import MalformedMessage, decode_envelope

if TYPE_CHECKING:
    from scoreboard.backends import Backends

log = logging.getLogger("scoreboard")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scoreboard", description="Real-time leaderboard server")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text, or json: one JSON object a line (default from config: log.format, text)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default from config: 8000)")
    serve.add_argument("--role", choices=("all", "api", "worker"), help="which actors to run")
    serve.add_argument(
        "--ops-port",
        type=int,
        help="port of the operations listener (/healthz, /readyz, /api/v1/supervisor, /metrics) "
        "on ops.host (default from config: 0, a free port, logged); with --processes N, child i "
        "listens on this port + i",
    )
    serve.add_argument(
        "--processes",
        type=int,
        help="real stack: run the role in N child processes under this one (--role all: N API "
        "processes on the port and one worker process); default from config: one per CPU core; "
        "1 runs everything in this process, as embedded mode always does",
    )
    # A child of --processes N: its log prefix and its end of the link to the parent.
    serve.add_argument("--child-name", help=argparse.SUPPRESS)
    serve.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)

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
    show = failed_commands.add_parser("show", help="one dead-lettered action, whole, as JSON")
    show.add_argument("action_id")
    replay = failed_commands.add_parser(
        "replay",
        help="move dead-lettered actions back to the queue (safe to repeat: an action counts once)",
    )
    replay.add_argument("--limit", type=int, default=1000)
    replay.add_argument("--action-id", help="only this action")
    purge = failed_commands.add_parser("purge", help="delete dead-lettered actions for good")
    purge_which = purge.add_mutually_exclusive_group(required=True)
    purge_which.add_argument("--action-id", help="only this action")
    purge_which.add_argument("--all", action="store_true", help="every dead letter")

    keys = commands.add_parser("keys", help="the JWT signing keys")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser(
        "rotate", help="add a new signing key; retire old keys whose tokens have all expired"
    )
    keys_commands.add_parser(
        "rewrap",
        help="encrypt every signing key with the first key-encryption key (after a KEK rotation)",
    )
    keys_commands.add_parser("new-kek", help="print a new random key-encryption key")

    clients = commands.add_parser("clients", help="OAuth clients")
    clients_commands = clients.add_subparsers(dest="clients_command", required=True)
    add_client = clients_commands.add_parser(
        "add", help="register a client (a confidential one's secret is printed once)"
    )
    add_client.add_argument("client_id")
    add_client.add_argument("--type", choices=("public", "confidential"), required=True)
    add_client.add_argument(
        "--redirect-uri", action="append", required=True, help="exact redirect URI (repeatable)"
    )
    add_client.add_argument(
        "--scope",
        action="append",
        choices=("read", "write", "admin"),
        help="default: read and write (admin: only users marked admin get it)",
    )
    add_client.add_argument("--name", default="")
    clients_commands.add_parser("list", help="every client, the built-in scoreboard-web first")
    remove_client = clients_commands.add_parser(
        "remove", help="remove a client and revoke every token issued to it"
    )
    remove_client.add_argument("client_id")

    loadtest = commands.add_parser(
        "loadtest",
        help="load-test a running server from outside (players, WebSockets, open-loop actions)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(loadtest)

    audit = commands.add_parser(
        "audit",
        help="a user's attempts, newest first: settled, failed, and refused by the API",
    )
    audit.add_argument("username")
    audit.add_argument("--since", help="unix seconds or an RFC 3339 time (2026-12-06T07:00:00Z)")
    audit.add_argument("--limit", default="50", help="entries on this page, 1-500 (default 50)")
    audit.add_argument("--cursor", help="where the previous page ended (it prints the next one)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")

    users = commands.add_parser("users", help="accounts")
    users_commands = users.add_subparsers(dest="users_command", required=True)
    add_user = users_commands.add_parser("add", help="create an account")
    add_user.add_argument("username")
    add_user.add_argument("--email", required=True)
    add_user.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    disable_user = users_commands.add_parser(
        "disable", help="disable an account and revoke every token of it"
    )
    disable_user.add_argument("username")
    grant_admin = users_commands.add_parser(
        "grant-admin", help="let an account be granted the admin scope (when its client asks)"
    )
    grant_admin.add_argument("username")
    revoke_admin = users_commands.add_parser(
        "revoke-admin", help="take the admin scope away: every grant holding it is revoked"
    )
    revoke_admin.add_argument("username")
    suspend = users_commands.add_parser(
        "suspend",
        help="refuse the account's actions (account_suspended) and take it off the board",
    )
    suspend.add_argument("username")
    unsuspend = users_commands.add_parser(
        "unsuspend", help="accept the account's actions again and put its score back on the board"
    )
    unsuspend.add_argument("username")

    flags = commands.add_parser(
        "flags",
        help="behavioural flags, newest first (`flags clear ID` clears one)",
        description="List the behavioural flags (docs/anticheat.md), newest first, or clear one.",
    )
    flags.add_argument("--user", help="only this user's (a username or a user id)")
    flags.add_argument(
        "--since", help="raised since: an RFC 3339 time, epoch ms, or a span back (2h, 7d)"
    )
    flags.add_argument("--kind", choices=FLAG_KINDS)
    flags.add_argument("--standing", action="store_true", help="only flags not cleared")
    flags.add_argument("--limit", type=int, default=100)
    flags.add_argument("--json", action="store_true", help="one JSON object a line")
    flags_commands = flags.add_subparsers(dest="flags_command")
    clear = flags_commands.add_parser("clear", help="clear a flag (an operator looked at it)")
    clear.add_argument("flag_id", type=int)
    return parser


def configure_logging(
    level: str, process_name: str | None = None, log_format: str = "text"
) -> None:
    from scoreboard.logs import configure

    configure(level, process_name, log_format)


def apply_serve_arguments(config: Config, args: argparse.Namespace) -> Config:
    server: dict[str, object] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    if args.role is not None:
        server["role"] = args.role
    if args.ops_port is not None:
        if not 0 <= args.ops_port <= 65535:
            raise ConfigError("--ops-port must be between 0 and 65535")
        config = config.replace(ops={"port": args.ops_port})
    if args.processes is not None:
        if args.processes < 1:
            raise ConfigError("--processes must be at least 1")
        server["processes"] = args.processes
    if args.parent_fd is not None:
        server["reuse_port"] = True  # the siblings listen on the same port
    return config.replace(server=server) if server else config


def run_serve(config: Config, args: argparse.Namespace) -> int:
    from scoreboard.processes import plan_children, run_parent
    from scoreboard.server import run_until_signalled

    if args.parent_fd is not None:
        # Ctrl-C reaches the whole process group; the parent stops its children itself.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return _run(run_child, config, args.parent_fd)
    children, notice = plan_children(config)
    if notice:
        log.warning("%s", notice)
    if not children:
        return _run(run_until_signalled, config)
    return _run(run_parent, config, children, args.log_level)


async def run_child(config: Config, parent_fd: int) -> int:
    from scoreboard.processes import ParentLink
    from scoreboard.server import run_until_signalled

    parent = ParentLink(parent_fd)
    try:
        return await run_until_signalled(config, parent)
    finally:
        parent.close()


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
        broker = backends.broker
        match args.failed_command:
            case "list":
                for body, reason in await broker.list_failed(args.limit):
                    print(f"{reason}\t{body.decode(errors='replace')}")
            case "show":
                letters = await broker.list_failed(FAILED_SHOW_SCAN)
                found = [(body, reason) for body, reason in letters if _is_action(body, args)]
                if not found:
                    print(f"no dead letter of action {args.action_id}", file=sys.stderr)
                    return 1
                for body, reason in found:
                    print(_failed_json(body, reason))
            case "replay":
                moved = await broker.replay_failed(args.limit, args.action_id)
                print(f"replayed {moved} action(s)")
            case _:
                purged = await broker.purge_failed(None if args.all else args.action_id)
                print(f"purged {purged} action(s)")
    return 0


# `scoreboard failed show` looks this deep into the failed queue.
FAILED_SHOW_SCAN = 100_000


def _is_action(body: bytes, args: argparse.Namespace) -> bool:
    try:
        wanted: str = args.action_id
        return str(decode_envelope(body).action_id) == wanted
    except MalformedMessage:
        return False


def _failed_json(body: bytes, reason: str) -> str:
    """A dead letter for an operator: its reason and the whole action."""
    from scoreboard import json_codec

    action = json_codec.loads(body)  # a letter `_is_action` decoded
    return json_codec.dumps({"reason": reason, "action": action}, sort_keys=True).decode()


def _revocation_expires_at_ms(config: Config) -> int:
    from scoreboard.http.oauth_server import REVOCATION_MARGIN_S

    lifetime_s = config.auth.access_token_ttl_s + config.auth.leeway_s + REVOCATION_MARGIN_S
    return clock.now_ms() + lifetime_s * 1000


async def _announce_revoked(backends: Backends, grant_ids: list[str], expires_at_ms: int) -> None:
    """Tell running API processes at once (they also reload the deny-list every second or so,
    which is how a server in embedded mode, whose broker lives in its own process, learns it)."""
    from scoreboard.records import TokensRevoked
    from scoreboard.wire import encode_event

    if not grant_ids:
        return
    try:
        await backends.broker.publish_events(
            [encode_event(TokensRevoked(tuple(grant_ids), (), expires_at_ms))]
        )
    except Exception as exc:  # the store holds the revocation; the servers' reload finds it
        log.warning("could not publish the revocation (%s); servers reload it shortly", exc)


async def run_keys(config: Config, args: argparse.Namespace) -> int:
    from scoreboard.auth.key_encryption import kek_id, load_key_encryption, new_kek
    from scoreboard.auth.keys import rotate_keys
    from scoreboard.backends import open_backends

    if args.keys_command == "new-kek":
        print(new_kek())
        return 0
    if args.keys_command == "rewrap":
        key_encryption = load_key_encryption(config)
        if not key_encryption.enabled:
            print(
                "scoreboard: no key-encryption key is configured: set "
                "SCOREBOARD_AUTH_KEY_ENCRYPTION_KEY (or _FILE), the new key first",
                file=sys.stderr,
            )
            return 2
        async with open_backends(config, exclusive=False) as backends:
            rewrapped = await backends.store.reseal_signing_keys(plain_only=False)
        print(
            f"encrypted {len(rewrapped)} signing key(s) with the key-encryption key "
            f"{kek_id(key_encryption.keks[0])}{': ' if rewrapped else ''}{', '.join(rewrapped)}"
        )
        return 0
    lifetime_s = (
        config.auth.access_token_ttl_s
        + config.auth.leeway_s
        + config.oauth.key_activation_s
        + config.oauth.key_refresh_s
    )
    async with open_backends(config, exclusive=False) as backends:
        kid, retired = await rotate_keys(backends.store, token_lifetime_ms=int(lifetime_s * 1000))
    print(f"added signing key {kid}; it signs in {config.oauth.key_activation_s:.0f} s")
    for old in retired:
        print(f"retired signing key {old} (its tokens have expired)")
    return 0


async def run_clients(config: Config, args: argparse.Namespace) -> int:
    from scoreboard.adapters.interfaces import ClientExists
    from scoreboard.auth.clients import InvalidClient, new_client, web_client
    from scoreboard.backends import open_backends

    async with open_backends(config, exclusive=False) as backends:
        store = backends.store
        if args.clients_command == "add":
            try:
                record, secret = new_client(
                    args.client_id, args.type, args.redirect_uri, args.scope, args.name
                )
                await store.add_client(record)
            except (InvalidClient, ClientExists) as exc:
                print(f"scoreboard: {exc}", file=sys.stderr)
                return 1
            print(f"added {record.client_type} client {record.client_id}")
            if secret is not None:
                print(f"client_secret: {secret}")
                print("(shown once: store it now; only its hash is kept)")
            return 0
        if args.clients_command == "list":
            for client in [web_client(config.public_origin), *await store.list_clients()]:
                print(
                    f"{client.client_id}\t{client.client_type}\t{' '.join(client.scopes)}"
                    f"\t{' '.join(client.redirect_uris)}\t{client.name}"
                )
            return 0
        expires_at_ms = _revocation_expires_at_ms(config)
        revoked = await store.remove_client(args.client_id, expires_at_ms)
        if revoked is None:
            print(
                f"scoreboard: no client {args.client_id} (scoreboard-web is built in)",
                file=sys.stderr,
            )
            return 1
        await _announce_revoked(backends, revoked, expires_at_ms)
        print(f"removed client {args.client_id}; revoked {len(revoked)} grant(s)")
        return 0


async def run_audit(config: Config, args: argparse.Namespace) -> int:
    import json

    from scoreboard.audit import (
        AuditQueryError,
        decode_cursor,
        encode_cursor,
        entry_json,
        parse_limit,
        parse_time_ms,
    )
    from scoreboard.backends import open_backends

    try:
        since_ms = parse_time_ms(args.since) if args.since is not None else 0
        limit = parse_limit(args.limit)
        before = decode_cursor(args.cursor) if args.cursor is not None else None
    except AuditQueryError as exc:
        print(f"scoreboard: {exc}", file=sys.stderr)
        return 1
    async with open_backends(config, exclusive=False) as backends:
        user = await backends.store.get_user_by_username(args.username)
        if user is None:
            print(f"scoreboard: no user {args.username}", file=sys.stderr)
            return 1
        entries = await backends.store.audit_trail(
            user.user_id, since_ms=since_ms, before=before, limit=limit + 1
        )
    for entry in entries[:limit]:
        shown = entry_json(entry)
        if args.json:
            print(json.dumps(shown, ensure_ascii=False))
            continue
        status = shown["status_code"] or ""
        print(
            f"{shown['at']}  {shown['outcome']:<9} {status!s:<3}  "
            f"{shown['action_type'] or '-'}  nonce={shown['nonce'] or '-'}  "
            f"delta={shown['score_delta']}  ip={shown['ip'] or '-'}  "
            f"{shown['error'] or ''} {shown['message'] or ''}".rstrip()
        )
    if len(entries) > limit:
        print(f"more: --cursor {encode_cursor(entries[limit - 1].cursor)}", file=sys.stderr)
    return 0


async def run_users(config: Config, args: argparse.Namespace) -> int:
    from scoreboard.adapters.interfaces import EmailTaken, UsernameTaken
    from scoreboard.auth.passwords import Passwords
    from scoreboard.auth.users import RegistrationError, register_user
    from scoreboard.backends import open_backends

    async with open_backends(config, exclusive=False) as backends:
        if args.users_command == "add":
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass("password: ")
            try:
                user_id = await register_user(
                    backends.store, Passwords(), args.username, args.email, password
                )
            except (RegistrationError, UsernameTaken, EmailTaken) as exc:
                print(f"scoreboard: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            print(f"added user {args.username} (id {user_id})")
            return 0
        if args.users_command in ("suspend", "unsuspend"):
            suspend = args.users_command == "suspend"
            changed = await backends.store.set_suspended(args.username, suspend, _operator())
            if changed is None:
                print(f"scoreboard: no user {args.username}", file=sys.stderr)
                return 1
            user_id, did_change = changed
            state = "suspended" if suspend else "not suspended"
            if not did_change:
                print(f"{args.username} (id {user_id}) was {state} already")
            elif suspend:
                print(
                    f"suspended {args.username} (id {user_id}): actions refused, off the board "
                    "within seconds"
                )
            else:
                print(
                    f"unsuspended {args.username} (id {user_id}): back on the board within seconds"
                )
            return 0
        expires_at_ms = _revocation_expires_at_ms(config)
        if args.users_command in ("grant-admin", "revoke-admin"):
            admin = args.users_command == "grant-admin"
            revoked = await backends.store.set_admin(args.username, admin, expires_at_ms)
            if revoked is None:
                print(f"scoreboard: no user {args.username}", file=sys.stderr)
                return 1
            await _announce_revoked(backends, revoked, expires_at_ms)
            if admin:
                print(f"{args.username} may now be granted the admin scope")
            else:
                print(f"{args.username} is no longer an admin; revoked {len(revoked)} grant(s)")
            return 0
        revoked = await backends.store.disable_user(args.username, expires_at_ms)
        if revoked is None:
            print(f"scoreboard: no user {args.username}", file=sys.stderr)
            return 1
        await _announce_revoked(backends, revoked, expires_at_ms)
        print(f"disabled {args.username}; revoked {len(revoked)} grant(s)")
        return 0


def _operator() -> str:
    """Who did it, as the stores record it: the command line and the system user."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


async def run_flags(config: Config, args: argparse.Namespace) -> int:
    import json

    from scoreboard.actors.frames import rfc3339_ms
    from scoreboard.anticheat.records import FlagQuery
    from scoreboard.backends import open_backends
    from scoreboard.since import InvalidSince, parse_since

    async with open_backends(config, exclusive=False) as backends:
        store = backends.store
        if args.flags_command == "clear":
            record = await store.clear_flag(args.flag_id, _operator())
            if record is None:
                print(f"scoreboard: no flag {args.flag_id}", file=sys.stderr)
                return 1
            print(f"flag {record.flag_id} ({record.flag.kind}, {record.flag.subject}) cleared")
            return 0
        user_id: int | None = None
        if args.user is not None:
            user = await store.get_user_by_username(args.user)
            if user is None and args.user.isdigit():
                user = await store.get_user(int(args.user))
            if user is None:
                print(f"scoreboard: no user {args.user}", file=sys.stderr)
                return 1
            user_id = user.user_id
        since_ms: int | None = None
        if args.since is not None:
            try:
                since_ms = parse_since(args.since, clock.now_ms())
            except InvalidSince as exc:
                print(f"scoreboard: --since {exc}", file=sys.stderr)
                return 2
        records = await store.list_flags(
            FlagQuery(
                user_id=user_id,
                since_ms=since_ms,
                kind=args.kind,
                standing_only=args.standing,
                limit=max(1, min(args.limit, 10_000)),
            )
        )
        for record in records:
            if args.json:
                print(json.dumps(record.as_json(), sort_keys=True))
                continue
            flag = record.flag
            raised = rfc3339_ms(flag.raised_at_ms)
            state = (
                "standing" if record.cleared_at_ms is None else f"cleared by {record.cleared_by}"
            )
            evidence = json.dumps(flag.as_json()["evidence"], sort_keys=True)
            print(f"{record.flag_id}\t{raised}\t{flag.kind}\t{flag.subject}\t{state}\t{evidence}")
        if not records:
            print("no flags", file=sys.stderr)
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    child_name = getattr(args, "child_name", None)
    if args.command == "loadtest":  # knows only the server's URL, not its configuration
        from scoreboard.loadtest.command import main as loadtest_main

        configure_logging(args.log_level, None, args.log_format or "text")
        return loadtest_main(Options.from_namespace(args))
    try:
        config = load_config()
        if args.log_format is not None:
            config = config.replace(log={"format": args.log_format})
        if args.command == "serve":
            config = apply_serve_arguments(config, args)
            _ = config.backend_mode  # a role the backends cannot run fails here, with its reason
    except ConfigError as exc:
        configure_logging(args.log_level, child_name, args.log_format or "text")
        print(f"scoreboard: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(args.log_level, child_name, config.log.format)
    if args.command == "serve":
        return run_serve(config, args)
    if args.command == "migrate":
        return _run(run_migrate, config)
    if args.command == "verify":
        return _run(run_verify, config)
    operator_tools = {
        "audit": run_audit,
        "failed": run_failed,
        "keys": run_keys,
        "clients": run_clients,
        "users": run_users,
        "flags": run_flags,
    }
    return _run(operator_tools[args.command], config, args)


def _run(command: Callable[..., Awaitable[int]], *args: object) -> int:
    """Run a command; what the operator must fix (a setting, a key-encryption key, data a
    migration cannot take) is one clear message on stderr and exit code 2, not a traceback."""
    from scoreboard.adapters.migrations import MigrationError

    refusals: list[BaseException] = []
    try:
        return trio.run(command, *args)
    except* (ConfigError, MigrationError) as group:
        refusals.extend(_leaves(group))
    for refusal in refusals:
        kind = "configuration error" if isinstance(refusal, ConfigError) else "migration refused"
        print(f"scoreboard: {kind}: {refusal}", file=sys.stderr)
    return 2


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf
        for exc in group.exceptions
        for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    ]


if __name__ == "__main__":
    sys.exit(main())
