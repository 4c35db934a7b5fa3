"""One frozen configuration object, built at start from the defaults, the operator's
configuration directory and the environment, in that order.

The defaults ship inside the package (`scoreboard/defaults/`, which in a checkout is a link to
`config/`): `default.toml` and the action catalogue `actions.toml`. The operator's directory is
`SCOREBOARD_CONFIG_DIR`, else `./config` when it holds either file: a `default.toml` there changes
the keys it names, an `actions.toml` there replaces the catalogue. Every key can then be
overridden by `SCOREBOARD_<SECTION>_<KEY>`. The object is passed explicitly to whatever needs
it; nothing reads the environment later.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import ipaddress
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "SCOREBOARD_"
CONFIG_DIR_VARIABLE = f"{ENV_PREFIX}CONFIG_DIR"
CONFIG_FILES = ("default.toml", "actions.toml")
Role = Literal["all", "api", "worker"]
BackendMode = Literal["embedded", "real"]
# The settings that choose the backends: all empty is embedded mode, all set is the real stack.
BACKEND_URL_SETTINGS = (
    ("database", "SCOREBOARD_DATABASE_URL"),
    ("redis", "SCOREBOARD_REDIS_URL"),
    ("amqp", "SCOREBOARD_AMQP_URL"),
)


MAX_SHARDS = 1024


class ConfigError(ValueError):
    """A setting is missing, unknown or of the wrong type."""


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    role: Role = "all"
    trusted_proxies: tuple[str, ...] = ()
    shutdown_grace_s: float = 10.0
    # On SIGTERM: how long `/readyz` answers 503 (and responses carry `Connection: close`)
    # before the listener stops accepting, so that load balancers route new clients elsewhere.
    drain_delay_s: float = 1.0
    # The whole drain's bound: past it the process cancels what still runs and exits 1.
    drain_timeout_s: float = 20.0
    # `scoreboard serve` on the real stack: how many API processes share the port (0: one per
    # CPU core); the embedded backends live in one process, which runs alone.
    processes: int = 0
    # SO_REUSEPORT on the listening socket, so that several processes serve one port (the
    # children of `--processes N` set it).
    reuse_port: bool = False
    # Open TCP connections (HTTP and WebSocket) this process accepts; past it, 503 and close.
    max_connections: int = 16_000
    # A new connection's first request head must arrive within this long, or it is closed.
    header_timeout_s: float = 10.0
    # A request body (at most 4 KiB) that has not fully arrived this long after its head is
    # answered 408 and its connection closed.
    body_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        # Checked at start: a bad entry would otherwise fail every request that reads the IP.
        for entry in self.trusted_proxies:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(
                    f"server.trusted_proxies ({ENV_PREFIX}SERVER_TRUSTED_PROXIES): {entry!r} is "
                    "not an IP address or network (e.g. 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32)"
                ) from None


@dataclass(frozen=True, slots=True)
class OpsConfig:
    """The operations listener every process serves (`scoreboard/http/ops.py`)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    # 0: a free port the kernel picks (logged at start). With `--processes N`, child i listens
    # on `port + i` (API children first, then workers).
    port: int = 0
    # A bearer token for `/metrics` and `/api/v1/supervisor` (and the exception text in the
    # latter), or a file holding it; set by the environment, never in a file of the repository.
    token: str = field(default="", repr=False)
    token_file: str = ""
    # Also serve `/metrics` and `/api/v1/supervisor` on the public port (`/healthz` and
    # `/readyz` always are, for load balancers).
    expose_on_public_port: bool = False


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True, slots=True)
class PublicConfig:
    origin: str = ""


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = ""
    # What `scoreboard migrate` connects with: a role that owns the schema, while `url`'s role
    # (the server's) gets only what the application needs, `action_logs` append-only
    # (docs/database.md). Empty: `url`, one role for both, and nothing is append-only for it.
    owner_url: str = ""
    pool_min: int = 2
    pool_max: int = 8


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = ""
    prefix: str = "sb:"


@dataclass(frozen=True, slots=True)
class AmqpConfig:
    url: str = ""
    queue: str = "user-actions"
    failed_queue: str = "user-actions.failed"
    dead_letter_exchange: str = "dlx"
    events_exchange: str = "scoreboard.events"
    message_ttl_ms: int = 3_600_000
    max_priority: int = 10
    prefetch: int = 256
    max_attempts: int = 3
    # How long a failed action waits before its next attempt: the first delay after the first
    # attempt, the second after the second, ...; the last one repeats.
    retry_delays_ms: tuple[int, ...] = (1_000, 10_000)
    publish_timeout_s: float = 5.0
    # Actions are sharded by user id over this many queues (`<queue>.0` ...), each consumed by
    # one worker at a time; 1 keeps the single queue `queue`. See docs/scaling.md.
    shards: int = 1
    # The type of the shard queues: "classic", or "quorum" (replicated; no priorities).
    queue_type: Literal["classic", "quorum"] = "classic"

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"amqp.shards must be between 1 and {MAX_SHARDS}, not {self.shards}")
        if self.max_attempts < 1:
            raise ConfigError(f"amqp.max_attempts ({ENV_PREFIX}AMQP_MAX_ATTEMPTS) must be >= 1")
        if not self.retry_delays_ms or any(delay <= 0 for delay in self.retry_delays_ms):
            raise ConfigError(
                f"amqp.retry_delays_ms ({ENV_PREFIX}AMQP_RETRY_DELAYS_MS) must list positive"
                " delays in milliseconds"
            )

    def retry_delay_ms(self, attempts_done: int) -> int:
        """The wait before the next attempt of an action that has failed `attempts_done` times."""
        return self.retry_delays_ms[min(attempts_done, len(self.retry_delays_ms)) - 1]


@dataclass(frozen=True, slots=True)
class EmbeddedConfig:
    # Where embedded mode keeps its SQLite file; relative paths start at the working directory.
    data_dir: str = "var"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    enabled: bool = True
    ip_requests_per_minute: int = 100
    user_actions_per_minute: int = 10
    registrations_per_minute_per_ip: int = 10
    registrations_per_minute: int = 600


@dataclass(frozen=True, slots=True)
class AuthConfig:
    issuer: str = ""
    audience: str = "scoreboard-api"
    access_token_ttl_s: int = 900
    leeway_s: int = 30
    # The key-encryption key(s) of the signing keys (scoreboard/auth/key_encryption.py), or a
    # file holding them; set by the environment, never in a file of the repository.
    key_encryption_key: str = field(default="", repr=False)
    key_encryption_key_file: str = ""


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    # Authorization codes live at most 60 s whatever this says (docs/api.md).
    code_ttl_s: int = 60
    refresh_token_ttl_s: int = 30 * 24 * 3600
    # How long a login form may be posted after it was shown.
    login_form_ttl_s: int = 600
    login_attempts_per_minute_per_ip: int = 20
    # Failed sign-ins per (username, IP) before each further attempt waits 1, 2, 4 … s, at most
    # the maximum; no account is ever locked. Failures are forgotten a while after the last one.
    login_failures_before_delay: int = 5
    login_failure_delay_max_s: int = 60
    login_failures_forgotten_after_s: int = 900
    # Token and revocation requests per client IP; an authenticated confidential client is
    # counted on its own client id instead (its server's IP is shared by all of its users).
    token_requests_per_minute_per_ip: int = 60
    token_requests_per_minute_per_client: int = 600
    # The deny-list is reloaded from the store this often (events deliver revocations at once;
    # this bounds how late one that missed its event arrives, e.g. from the CLI).
    revocation_poll_s: float = 1.0
    # Each process reloads the signing keys this often; a new key signs only once it is
    # `key_activation_s` old, by when every process verifies with it.
    key_refresh_s: float = 10.0
    key_activation_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    max_batch: int = 500
    # After the first decision of a batch, how long to gather more before committing. Each batch
    # costs the worker about a millisecond of CPU whatever its size (round trips to PostgreSQL,
    # Redis and RabbitMQ, each a wake-up of its threads), so under load a few milliseconds of
    # wait make batches several times larger; 0 commits whatever is waiting at once.
    linger_ms: int = 5

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ConfigError(f"scorer.max_batch ({ENV_PREFIX}SCORER_MAX_BATCH) must be >= 1")
        if self.linger_ms < 0:
            raise ConfigError(f"scorer.linger_ms ({ENV_PREFIX}SCORER_LINGER_MS) must be >= 0")


@dataclass(frozen=True, slots=True)
class LeaderboardConfig:
    size: int = 10
    max_limit: int = 100


@dataclass(frozen=True, slots=True)
class WebsocketConfig:
    auth_timeout_s: float = 5.0
    max_message_bytes: int = 4096
    ping_interval_s: float = 20.0
    idle_timeout_s: float = 60.0
    send_timeout_s: float = 10.0
    # The kernel send buffer of a live-feed socket (0: the kernel's autotuning, up to
    # net.ipv4.tcp_wmem). Bounded, a client that stops reading is noticed after this much.
    send_buffer_bytes: int = 65_536
    min_update_interval_s: float = 0.1
    max_connections_per_user: int = 10
    max_connections_per_ip: int = 100


@dataclass(frozen=True, slots=True)
class JanitorConfig:
    interval_s: float = 60.0
    batch_size: int = 500
    # Expired codes and refresh tokens are kept this long, so that their reuse is still caught.
    retention_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class AnticheatConfig:
    """The behavioural flags (`scoreboard.anticheat`; docs/anticheat.md says why these defaults).
    Times are those of the decisions (when the API received each attempt)."""

    # A burst: this many attempts of one user within this many seconds.
    burst_actions: int = 5
    burst_window_s: float = 0.3
    # Inhumanly regular: the user's last `regular_intervals` intervals between attempts have a
    # coefficient of variation (standard deviation / mean) at most `regular_max_cv`.
    regular_intervals: int = 20
    regular_max_cv: float = 0.01
    # Score growth: the points a user gained within the window, against every user who acted
    # in it: flagged at a robust z-score (median and MAD) of at least `growth_z`, when at least
    # `growth_min_population` users acted and the user gained at least `growth_min_points`.
    growth_window_s: float = 3600.0
    growth_z: float = 20.0
    growth_min_population: int = 30
    growth_min_points: int = 3000
    # How often the population's median and MAD are recomputed (each time over every user).
    growth_refresh_s: float = 60.0
    # Many accounts: at least this many distinct users acting from one address (IPv6: one /64)
    # within the window.
    shared_address_users: int = 8
    shared_address_window_s: float = 3600.0
    # A flag is not raised again for the same user (or address) and kind for this long.
    cooloff_s: float = 86_400.0
    # Memory bounds: beyond these, the users (addresses) seen least recently are forgotten.
    max_users: int = 50_000
    max_addresses: int = 50_000

    def __post_init__(self) -> None:
        at_least = {
            "burst_actions": 2,
            "regular_intervals": 2,
            "growth_min_population": 1,
            "shared_address_users": 2,
            "max_users": 1,
            "max_addresses": 1,
        }
        for name, minimum in at_least.items():
            if getattr(self, name) < minimum:
                raise ConfigError(
                    f"anticheat.{name} ({ENV_PREFIX}ANTICHEAT_{name.upper()}) must be at least "
                    f"{minimum}"
                )
        positive = (
            "burst_window_s",
            "regular_max_cv",
            "growth_window_s",
            "growth_z",
            "growth_refresh_s",
            "shared_address_window_s",
            "cooloff_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(
                    f"anticheat.{name} ({ENV_PREFIX}ANTICHEAT_{name.upper()}) must be positive"
                )
        if self.growth_min_points < 0:
            raise ConfigError(
                f"anticheat.growth_min_points ({ENV_PREFIX}ANTICHEAT_GROWTH_MIN_POINTS) must not "
                "be negative"
            )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    public: PublicConfig = field(default_factory=PublicConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    amqp: AmqpConfig = field(default_factory=AmqpConfig)
    embedded: EmbeddedConfig = field(default_factory=EmbeddedConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    oauth: OAuthConfig = field(default_factory=OAuthConfig)
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    leaderboard: LeaderboardConfig = field(default_factory=LeaderboardConfig)
    websocket: WebsocketConfig = field(default_factory=WebsocketConfig)
    janitor: JanitorConfig = field(default_factory=JanitorConfig)
    anticheat: AnticheatConfig = field(default_factory=AnticheatConfig)
    # The operator's configuration directory; None: the packaged defaults alone.
    config_dir: Path | None = None

    @property
    def public_origin(self) -> str:
        """The origin of the web page, the `scoreboard-web` redirect URI and the WS allow-list."""
        if self.public.origin:
            return self.public.origin.rstrip("/")
        return f"http://{self.server.host}:{self.server.port}"

    @property
    def issuer(self) -> str:
        return self.auth.issuer or self.public_origin

    @property
    def backend_mode(self) -> BackendMode:
        """`embedded` when no backend URL is set, `real` when all three are; anything else, or
        embedded mode with a role other than `all`, is a `ConfigError` that says why."""
        urls = {env: getattr(self, section).url for section, env in BACKEND_URL_SETTINGS}
        missing = [env for env, url in urls.items() if not url]
        if len(missing) == len(urls):
            if self.server.role != "all":
                raise ConfigError(
                    f"server.role {self.server.role!r} needs the real backends: the embedded "
                    "ones live inside one process, which must run the role 'all' (set "
                    + ", ".join(urls)
                    + " to run API and worker apart)"
                )
            return "embedded"
        if missing:
            given = [env for env in urls if env not in missing]
            raise ConfigError(
                f"{', '.join(given)} set but {', '.join(missing)} not: set all three for the "
                "real PostgreSQL, Redis and RabbitMQ, or none for the embedded backends"
            )
        return "real"

    def replace(self, **sections: Mapping[str, Any]) -> Config:
        """A copy with some keys of some sections changed: `cfg.replace(server={"port": 0})`."""
        changes: dict[str, Any] = {}
        for name, values in sections.items():
            current = getattr(self, name)
            changes[name] = dataclasses.replace(current, **_coerce_section(type(current), values))
        return dataclasses.replace(self, **changes)


def default_config_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """`SCOREBOARD_CONFIG_DIR`, else `./config` if it holds a configuration file, else None."""
    env = os.environ if environ is None else environ
    explicit = env.get(CONFIG_DIR_VARIABLE)
    if explicit:
        if not Path(explicit).is_dir():
            raise ConfigError(f"{CONFIG_DIR_VARIABLE}={explicit}: no such directory")
        return Path(explicit)
    local = Path.cwd() / "config"
    if any((local / name).is_file() for name in CONFIG_FILES):
        return local
    return None


def config_file(config_dir: Path | None, name: str) -> tuple[str, str]:
    """A configuration file's source (for messages) and text: the operator's copy in
    `config_dir` if there is one, else the packaged default."""
    if config_dir is not None and (config_dir / name).is_file():
        path = config_dir / name
        return str(path), path.read_text(encoding="utf-8")
    return f"the packaged {name}", _packaged_text(name)


def _packaged_text(name: str) -> str:
    return importlib.resources.files("scoreboard").joinpath("defaults", name).read_text("utf-8")


def _section_types() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "config_dir"}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            items = (
                json.loads(text)
                if text.startswith("[")
                else [part.strip() for part in text.split(",") if part.strip()]
            )
        else:
            items = list(value)
        (item_type, _ellipsis) = typing.get_args(annotation)
        return tuple(_coerce(item, item_type, where) for item in items)
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"{where}: unsupported union type")
    raise ConfigError(f"{where}: unsupported type {annotation!r}")


def _coerce_section(section_type: type[Any], values: Mapping[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(section_type)
    section = section_type.__name__.removesuffix("Config").lower()
    out: dict[str, Any] = {}
    for key, value in values.items():
        where = f"{section}.{key} ({ENV_PREFIX}{section.upper()}_{key.upper()})"
        if key not in hints:
            raise ConfigError(f"unknown setting {where}")
        out[key] = _coerce(value, hints[key], where)
    return out


def _env_overrides(
    environ: Mapping[str, str], sections: Mapping[str, type[Any]]
) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_DIR_VARIABLE:
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            if key not in typing.get_type_hints(sections[section]):
                raise ConfigError(f"{name}: no setting {section}.{key}")
            overrides.setdefault(section, {})[key] = raw
    return overrides


def load_config(config_dir: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The packaged defaults, then the operator's `<config_dir>/default.toml` (by default from
    `default_config_dir`), then `SCOREBOARD_*` from the environment."""
    env = os.environ if environ is None else environ
    directory = config_dir if config_dir is not None else default_config_dir(env)
    sections = _section_types()
    merged: dict[str, dict[str, Any]] = {name: {} for name in sections}
    layers = [("the packaged default.toml", _packaged_text("default.toml"))]
    if directory is not None and (directory / "default.toml").is_file():
        path = directory / "default.toml"
        layers.append((str(path), path.read_text(encoding="utf-8")))
    for source, text in layers:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        for name, values in data.items():
            if name not in sections or not isinstance(values, dict):
                raise ConfigError(f"{source}: unknown section [{name}]")
            merged[name].update(values)
    for name, values in _env_overrides(env, sections).items():
        merged[name].update(values)
    built = {
        name: sections[name](**_coerce_section(sections[name], merged[name])) for name in sections
    }
    config = Config(config_dir=directory, **built)
    _ = config.backend_mode  # a mixed or impossible choice of backends fails here, at start
    return config
