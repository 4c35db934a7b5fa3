import dataclasses
import tomllib
from pathlib import Path

import pytest

from scoreboard.catalogue import configured_catalogue
from scoreboard.config import AnticheatConfig, ConfigError, load_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def test_defaults_come_from_the_toml_file() -> None:
    config = load_config(CONFIG_DIR, environ={})
    assert config.amqp.queue == "user-actions"
    assert config.amqp.message_ttl_ms == 3_600_000
    assert config.limits.enabled is True
    assert config.limits.user_actions_per_minute == 10
    assert config.auth.access_token_ttl_s == 900
    assert config.public_origin == "http://127.0.0.1:8000"
    assert config.issuer == config.public_origin


def test_environment_overrides_every_section_key() -> None:
    config = load_config(
        CONFIG_DIR,
        environ={
            "SCOREBOARD_DATABASE_URL": "postgresql://u@db:5432/x",
            "SCOREBOARD_REDIS_URL": "redis://cache:6379/3",
            "SCOREBOARD_AMQP_URL": "amqp://guest:guest@mq:5672/",
            "SCOREBOARD_LIMITS_ENABLED": "false",
            "SCOREBOARD_SERVER_PORT": "9001",
            "SCOREBOARD_PUBLIC_ORIGIN": "https://scores.example.com/",
            "SCOREBOARD_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
            "SCOREBOARD_WEBSOCKET_SEND_TIMEOUT_S": "2.5",
        },
    )
    assert config.database.url == "postgresql://u@db:5432/x"
    assert config.redis.url == "redis://cache:6379/3"
    assert config.amqp.url == "amqp://guest:guest@mq:5672/"
    assert config.limits.enabled is False
    assert config.server.port == 9001
    assert config.public_origin == "https://scores.example.com"
    assert config.server.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert config.websocket.send_timeout_s == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCOREBOARD_SERVER_PORT", "eighty"),
        ("SCOREBOARD_LIMITS_ENABLED", "maybe"),
        ("SCOREBOARD_SERVER_ROLE", "janitor"),
        ("SCOREBOARD_DATABASE_NOPE", "x"),
        ("SCOREBOARD_SERVER_TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
        ("SCOREBOARD_SERVER_TRUSTED_PROXIES", '["10.0.0.0/33"]'),
        ("SCOREBOARD_SERVER_TRUSTED_PROXIES", "192.0.2.300"),
    ],
)
def test_bad_settings_are_clear_errors(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config(CONFIG_DIR, environ={name: value})


def test_unrelated_environment_is_ignored() -> None:
    config = load_config(
        CONFIG_DIR, environ={"SCOREBOARD_CONFIG_DIR": "/elsewhere", "PATH": "/bin"}
    )
    assert config.server.port == 8000


def test_an_operator_directory_changes_only_the_keys_it_names(tmp_path: Path) -> None:
    (tmp_path / "default.toml").write_text("[server]\nport = 9100\n")
    config = load_config(tmp_path, environ={"SCOREBOARD_SERVER_HOST": "0.0.0.0"})
    assert config.config_dir == tmp_path
    assert config.server.port == 9100
    assert config.server.host == "0.0.0.0"
    assert config.amqp.queue == "user-actions"  # packaged default
    assert "complete_task" in configured_catalogue(config).types


def test_an_operator_catalogue_replaces_the_packaged_one(tmp_path: Path) -> None:
    (tmp_path / "actions.toml").write_text('[jump]\npoints = 1\nfields = { height = "integer" }\n')
    catalogue = configured_catalogue(load_config(environ={"SCOREBOARD_CONFIG_DIR": str(tmp_path)}))
    assert list(catalogue.types) == ["jump"]


def test_without_a_config_directory_the_packaged_defaults_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.config_dir is None
    assert config.server.port == 8000
    assert len(configured_catalogue(config).types) == 4


def test_a_missing_or_malformed_operator_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SCOREBOARD_CONFIG_DIR=/nonexistent"):
        load_config(environ={"SCOREBOARD_CONFIG_DIR": "/nonexistent"})
    (tmp_path / "default.toml").write_text("[server\n")
    with pytest.raises(ConfigError, match=str(tmp_path / "default.toml")):
        load_config(tmp_path, environ={})


def test_the_anticheat_section_of_the_toml_file_is_the_dataclass_defaults() -> None:
    config = load_config(CONFIG_DIR, environ={})
    assert config.anticheat == AnticheatConfig()
    written = tomllib.loads((CONFIG_DIR / "default.toml").read_text())["anticheat"]
    assert set(written) == {f.name for f in dataclasses.fields(AnticheatConfig)}


def test_anticheat_settings_are_overridden_and_checked() -> None:
    config = load_config(
        CONFIG_DIR,
        environ={"SCOREBOARD_ANTICHEAT_GROWTH_Z": "15", "SCOREBOARD_ANTICHEAT_BURST_ACTIONS": "8"},
    )
    assert (config.anticheat.growth_z, config.anticheat.burst_actions) == (15.0, 8)
    for name, value in [
        ("SCOREBOARD_ANTICHEAT_BURST_ACTIONS", "1"),
        ("SCOREBOARD_ANTICHEAT_REGULAR_MAX_CV", "0"),
        ("SCOREBOARD_ANTICHEAT_GROWTH_MIN_POINTS", "-1"),
        ("SCOREBOARD_ANTICHEAT_SHARED_ADDRESS_WINDOW_S", "-60"),
        ("SCOREBOARD_ANTICHEAT_MAX_USERS", "0"),
    ]:
        with pytest.raises(ConfigError, match=name):
            load_config(CONFIG_DIR, environ={name: value})
