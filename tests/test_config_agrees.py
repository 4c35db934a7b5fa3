"""`config/default.toml` and the configuration dataclasses say the same thing, and every setting
is read by something: a key added to one place and not the others fails here."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scoreboard.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOML = tomllib.loads((ROOT / "config" / "default.toml").read_text(encoding="utf-8"))
SECTIONS = {
    field.name: field.type
    for field in dataclasses.fields(Config)
    if dataclasses.is_dataclass(getattr(Config(), field.name))
}
PACKAGE_SOURCES = [
    path.read_text(encoding="utf-8")
    for path in (ROOT / "scoreboard").rglob("*.py")
    if path.name != "config.py"
]


def _section_fields(section: str) -> dict[str, Any]:
    values = getattr(Config(), section)
    return {field.name: getattr(values, field.name) for field in dataclasses.fields(values)}


def test_the_file_has_exactly_the_sections_of_the_dataclass() -> None:
    assert set(DEFAULT_TOML) == set(SECTIONS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_each_section_of_the_file_names_every_field_and_no_other(section: str) -> None:
    assert set(DEFAULT_TOML[section]) == set(_section_fields(section))


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_the_file_holds_the_dataclass_defaults(section: str) -> None:
    loaded = getattr(load_config(None, environ={}), section)
    assert loaded == getattr(Config(), section)


@pytest.mark.parametrize(
    ("section", "key"),
    [(section, key) for section in sorted(SECTIONS) for key in sorted(_section_fields(section))],
)
def test_every_setting_is_read_by_the_package(section: str, key: str) -> None:
    # Read as an attribute (`config.websocket.ping_interval_s`, `limits.enabled`) or by name.
    pattern = re.compile(rf"\.{key}\b|[\"']{key}[\"']")
    assert any(pattern.search(source) for source in PACKAGE_SOURCES), f"{section}.{key}"
