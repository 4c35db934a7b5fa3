"""The action catalogue (`actions.toml`, see `scoreboard.config`): the only source of score deltas.

Clients name an action type and give its data; the server looks up the points. `action_data`
must carry exactly the fields the catalogue lists, each of its declared type.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scoreboard.config import Config, config_file

FieldType = Literal["string", "integer", "unix_seconds"]
FIELD_TYPES: tuple[FieldType, ...] = ("string", "integer", "unix_seconds")
ACTION_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
MAX_STRING_FIELD = 200
MAX_INTEGER_FIELD = 2**31 - 1
# Refused in string fields: controls (NUL, ESC…), surrogates (an unpaired one is not text) and
# format characters (bidi overrides, zero-width characters), which no identifier needs and which
# one backend may store while another refuses the whole batch.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


class CatalogueError(ValueError):
    """The catalogue file is malformed."""


class InvalidActionData(ValueError):
    """The client's action type or data does not match the catalogue."""


@dataclass(frozen=True, slots=True)
class ActionType:
    name: str
    points: int
    cooldown_s: float
    fields: tuple[tuple[str, FieldType], ...]

    def as_json(self) -> dict[str, Any]:
        cooldown: float | int = (
            int(self.cooldown_s) if self.cooldown_s.is_integer() else self.cooldown_s
        )
        return {
            "action_type": self.name,
            "points": self.points,
            "cooldown_s": cooldown,
            "fields": dict(self.fields),
        }


@dataclass(frozen=True, slots=True)
class Catalogue:
    types: Mapping[str, ActionType]

    def get(self, name: str) -> ActionType | None:
        return self.types.get(name)

    def validate(self, action_type: Any, action_data: Any) -> ActionType:
        """The catalogue entry for this action, or `InvalidActionData` saying what is wrong."""
        if not isinstance(action_type, str) or not ACTION_TYPE_PATTERN.match(action_type):
            raise InvalidActionData("action_type must be a lower-case identifier")
        entry = self.types.get(action_type)
        if entry is None:
            raise InvalidActionData(f"unknown action_type {action_type!r}")
        if not isinstance(action_data, dict):
            raise InvalidActionData("action_data must be an object")
        expected = dict(entry.fields)
        unknown = sorted(set(action_data) - set(expected))
        if unknown:
            raise InvalidActionData(f"unknown action_data field(s): {', '.join(unknown)}")
        for name, kind in entry.fields:
            if name not in action_data:
                raise InvalidActionData(f"action_data.{name} is required")
            _check_field(name, kind, action_data[name])
        return entry

    def as_json(self) -> dict[str, Any]:
        return {"action_types": [entry.as_json() for entry in self.types.values()]}


def _check_field(name: str, kind: FieldType, value: Any) -> None:
    if kind == "string":
        if not isinstance(value, str) or not 1 <= len(value) <= MAX_STRING_FIELD:
            raise InvalidActionData(
                f"action_data.{name} must be a string of 1 to {MAX_STRING_FIELD} characters"
            )
        if has_refused_characters(value):
            raise InvalidActionData(
                f"action_data.{name} holds a control, format or surrogate character"
            )
    elif isinstance(value, bool) or not isinstance(value, int):
        raise InvalidActionData(f"action_data.{name} must be an integer")
    elif not 0 <= value <= MAX_INTEGER_FIELD:
        raise InvalidActionData(f"action_data.{name} is out of range")


def has_refused_characters(text: str) -> bool:
    # `isprintable` (in C) passes nearly every real string; the categories decide the rest.
    return not text.isprintable() and any(
        unicodedata.category(char) in REFUSED_CATEGORIES for char in text
    )


def configured_catalogue(config: Config) -> Catalogue:
    """The operator's `actions.toml` if their configuration directory has one, else the
    packaged catalogue."""
    source, text = config_file(config.config_dir, "actions.toml")
    return parse_catalogue(text, source)


def load_catalogue(path: Path) -> Catalogue:
    return parse_catalogue(path.read_text(encoding="utf-8"), str(path))


def parse_catalogue(text: str, path: str) -> Catalogue:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: {exc}") from None
    types: dict[str, ActionType] = {}
    for name, spec in raw.items():
        if not ACTION_TYPE_PATTERN.match(name) or not isinstance(spec, dict):
            raise CatalogueError(f"{path}: bad action type [{name}]")
        points = spec.get("points")
        cooldown = spec.get("cooldown_s", 5)
        fields = spec.get("fields", {})
        if isinstance(points, bool) or not isinstance(points, int) or points < 0:
            raise CatalogueError(f"{path}: [{name}] points must be a non-negative integer")
        if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) or cooldown < 0:
            raise CatalogueError(f"{path}: [{name}] cooldown_s must be a non-negative number")
        if not isinstance(fields, dict) or any(kind not in FIELD_TYPES for kind in fields.values()):
            raise CatalogueError(f"{path}: [{name}] fields must map names to {FIELD_TYPES}")
        types[name] = ActionType(
            name=name,
            points=points,
            cooldown_s=float(cooldown),
            fields=tuple((field_name, kind) for field_name, kind in fields.items()),
        )
    if not types:
        raise CatalogueError(f"{path}: no action types")
    return Catalogue(types=types)
