"""The action catalogue (`actions.toml`, see `scoreboard.config`): the only source of score deltas.

Clients name an action type and give its data; the server looks up the points. `action_data`
must carry exactly the fields the catalogue lists, each of its declared type, within the type's
`ranges`. A type's rules (documented in docs/actions.md) may also say what makes an action count
only once per user (`unique`: field names, and `utc_day`, the UTC day the server accepted it on)
and how old its `unix_seconds` fields may be at acceptance (`max_age_s`).
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from scoreboard import json_codec
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
# In `unique`: the UTC calendar day of the action's acceptance (the server's clock, never the
# client's), so `unique = ["utc_day"]` counts an action once per user and day.
UTC_DAY = "utc_day"
SPEC_KEYS = frozenset({"points", "cooldown_s", "fields", "unique", "ranges", "max_age_s"})


class CatalogueError(ValueError):
    """The catalogue file is malformed."""


class InvalidActionData(ValueError):
    """The client's action type or data does not match the catalogue."""


@dataclass(frozen=True, slots=True)
class ValueRange:
    """The inclusive bounds of an integer or `unix_seconds` field."""

    minimum: int
    maximum: int

    def as_json(self) -> dict[str, int]:
        return {"min": self.minimum, "max": self.maximum}


@dataclass(frozen=True, slots=True)
class ActionType:
    name: str
    points: int
    cooldown_s: float
    fields: tuple[tuple[str, FieldType], ...]
    # What makes an action count once per user: these fields' values (and `UTC_DAY`) together.
    unique: tuple[str, ...] = ()
    ranges: tuple[tuple[str, ValueRange], ...] = ()
    # How old a `unix_seconds` field may be when the server accepts the action; None: any age.
    max_age_s: int | None = None

    def unique_key(self, action_data: Mapping[str, Any], received_at_ms: int) -> str | None:
        """The key no two completed actions of this type and user may share (None: no such
        rule). `action_data` must have passed `Catalogue.validate`."""
        if not self.unique:
            return None
        parts: list[Any] = []
        for name in self.unique:
            if name == UTC_DAY:
                day = dt.datetime.fromtimestamp(received_at_ms / 1000, dt.UTC).date()
                parts.append(day.isoformat())
            else:
                parts.append(action_data[name])
        return json_codec.dumps(parts).decode()

    def uniqueness_reason(self) -> str:
        """Why an action whose unique key is taken is refused (the outcome's message)."""
        scope = ["UTC day" if name == UTC_DAY else f"action_data.{name}" for name in self.unique]
        return f"{self.name} counts once per user and {' and '.join(scope)}: already counted"

    def as_json(self) -> dict[str, Any]:
        cooldown: float | int = (
            int(self.cooldown_s) if self.cooldown_s.is_integer() else self.cooldown_s
        )
        rules: dict[str, Any] = {}
        if self.unique:
            rules["unique"] = list(self.unique)
        if self.ranges:
            rules["ranges"] = {name: bounds.as_json() for name, bounds in self.ranges}
        if self.max_age_s is not None:
            rules["max_age_s"] = self.max_age_s
        return {
            "action_type": self.name,
            "points": self.points,
            "cooldown_s": cooldown,
            "fields": dict(self.fields),
            "rules": rules,
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
        for name, bounds in entry.ranges:
            if not bounds.minimum <= action_data[name] <= bounds.maximum:
                raise InvalidActionData(
                    f"action_data.{name} must be between {bounds.minimum} and {bounds.maximum}"
                )
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
        if unknown := sorted(set(spec) - SPEC_KEYS):
            raise CatalogueError(f"{path}: [{name}] unknown key(s): {', '.join(unknown)}")
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
            unique=_parse_unique(path, name, spec.get("unique", []), fields),
            ranges=_parse_ranges(path, name, spec.get("ranges", {}), fields),
            max_age_s=_parse_max_age(path, name, spec.get("max_age_s"), fields),
        )
    if not types:
        raise CatalogueError(f"{path}: no action types")
    return Catalogue(types=types)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_unique(path: str, name: str, unique: Any, fields: dict[str, Any]) -> tuple[str, ...]:
    if UTC_DAY in fields:
        raise CatalogueError(f"{path}: [{name}] a field may not be called {UTC_DAY!r}")
    if (
        not isinstance(unique, list)
        or len(set(unique)) != len(unique)
        or any(part != UTC_DAY and part not in fields for part in unique)
    ):
        raise CatalogueError(
            f"{path}: [{name}] unique must list distinct field names or {UTC_DAY!r}"
        )
    return tuple(unique)


def _parse_ranges(
    path: str, name: str, ranges: Any, fields: dict[str, Any]
) -> tuple[tuple[str, ValueRange], ...]:
    if not isinstance(ranges, dict):
        raise CatalogueError(f"{path}: [{name}] ranges must map field names to {{min, max}}")
    parsed: list[tuple[str, ValueRange]] = []
    for field_name, bounds in ranges.items():
        if fields.get(field_name) not in ("integer", "unix_seconds"):
            raise CatalogueError(
                f"{path}: [{name}] ranges.{field_name} must name an integer or unix_seconds field"
            )
        if (
            not isinstance(bounds, dict)
            or set(bounds) != {"min", "max"}
            or not all(_is_integer(bound) for bound in bounds.values())
            or not 0 <= bounds["min"] <= bounds["max"] <= MAX_INTEGER_FIELD
        ):
            raise CatalogueError(
                f"{path}: [{name}] ranges.{field_name} must be {{min, max}} with"
                f" 0 <= min <= max <= {MAX_INTEGER_FIELD}"
            )
        parsed.append((field_name, ValueRange(bounds["min"], bounds["max"])))
    return tuple(parsed)


def _parse_max_age(path: str, name: str, max_age: Any, fields: dict[str, Any]) -> int | None:
    if max_age is None:
        return None
    if not _is_integer(max_age) or max_age <= 0:
        raise CatalogueError(f"{path}: [{name}] max_age_s must be a positive integer")
    if "unix_seconds" not in fields.values():
        raise CatalogueError(f"{path}: [{name}] max_age_s needs a unix_seconds field")
    return int(max_age)
