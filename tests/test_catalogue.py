from pathlib import Path

import pytest

from scoreboard.catalogue import CatalogueError, InvalidActionData, load_catalogue, parse_catalogue

CATALOGUE = load_catalogue(Path(__file__).resolve().parent.parent / "config" / "actions.toml")


def test_complete_task_is_worth_ten_points_with_a_five_second_cooldown() -> None:
    entry = CATALOGUE.validate("complete_task", {"task_id": "t-1", "completion_time": 1764500000})
    assert entry.points == 10
    assert entry.cooldown_s == 5
    assert dict(entry.fields) == {"task_id": "string", "completion_time": "unix_seconds"}


def test_catalogue_json_matches_the_contract_shape() -> None:
    types = {item["action_type"]: item for item in CATALOGUE.as_json()["action_types"]}
    assert types["complete_task"] == {
        "action_type": "complete_task",
        "points": 10,
        "cooldown_s": 5,
        "fields": {"task_id": "string", "completion_time": "unix_seconds"},
        "rules": {"unique": ["task_id"], "max_age_s": 86400},
    }
    assert types["win_match"]["rules"] == {"unique": ["match_id", "opponent_id"]}
    assert types["daily_login"]["rules"] == {"unique": ["utc_day"]}
    assert types["collect_item"]["rules"] == {"ranges": {"quantity": {"min": 1, "max": 1000}}}
    assert len(types) >= 3


@pytest.mark.parametrize(
    ("action_type", "data", "complaint"),
    [
        ("complete_task", {"task_id": "t"}, "completion_time is required"),
        (
            "complete_task",
            {"task_id": "t", "completion_time": 1, "score": 1000},
            "unknown action_data",
        ),
        ("complete_task", {"task_id": 5, "completion_time": 1}, "task_id must be a string"),
        ("complete_task", {"task_id": "t", "completion_time": "soon"}, "must be an integer"),
        ("complete_task", {"task_id": "t", "completion_time": True}, "must be an integer"),
        ("complete_task", {"task_id": "t", "completion_time": -1}, "out of range"),
        ("complete_task", {"task_id": "", "completion_time": 1}, "task_id must be a string"),
        ("complete_task", ["task_id"], "must be an object"),
        ("collect_item", {"item_id": "i", "quantity": 0}, "quantity must be between 1 and 1000"),
        ("collect_item", {"item_id": "i", "quantity": 1001}, "quantity must be between 1 and"),
        ("hack_score", {}, "unknown action_type"),
        ("Complete_Task", {}, "lower-case identifier"),
        (None, {}, "lower-case identifier"),
    ],
)
def test_bad_action_data_is_rejected_with_a_reason(
    action_type: object, data: object, complaint: str
) -> None:
    with pytest.raises(InvalidActionData, match=complaint):
        CATALOGUE.validate(action_type, data)


DAY_MS = 86_400_000
T0 = 1_764_547_200_000  # 2025-12-01 00:00 UTC


def test_unique_keys_say_what_counts_once() -> None:
    task = CATALOGUE.types["complete_task"]
    login = CATALOGUE.types["daily_login"]
    match = CATALOGUE.types["win_match"]
    item = CATALOGUE.types["collect_item"]
    data = {"task_id": "t-1", "completion_time": T0 // 1000}
    assert task.unique_key(data, T0) == task.unique_key(data, T0 + DAY_MS) == '["t-1"]'
    assert login.unique_key({"day": "x"}, T0) == login.unique_key({"day": "y"}, T0 + DAY_MS - 1)
    assert login.unique_key({"day": "x"}, T0 + DAY_MS) == '["2025-12-02"]'
    assert match.unique_key({"match_id": "m", "opponent_id": "a"}, T0) != match.unique_key(
        {"match_id": "m", "opponent_id": "b"}, T0
    )
    # Values that would collide if joined naively stay apart.
    assert match.unique_key({"match_id": "a,b", "opponent_id": "c"}, T0) != match.unique_key(
        {"match_id": "a", "opponent_id": "b,c"}, T0
    )
    assert item.unique_key({"item_id": "i", "quantity": 1}, T0) is None
    assert (
        login.uniqueness_reason() == "daily_login counts once per user and UTC day: already counted"
    )


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ('unique = ["nope"]', "unique must list distinct field names"),
        ('unique = ["t", "t"]', "unique must list distinct field names"),
        ('unique = "t"', "unique must list"),
        ("ranges = { t = { min = 1, max = 2 } }", "must name an integer or unix_seconds field"),
        ("ranges = { n = { min = 3, max = 2 } }", "0 <= min <= max"),
        ("ranges = { n = { min = 1 } }", "0 <= min <= max"),
        ("ranges = { n = { min = -1, max = 2 } }", "0 <= min <= max"),
        ("max_age_s = 0", "max_age_s must be a positive integer"),
        ("max_age_s = true", "max_age_s must be a positive integer"),
        ("uniqe = []", "unknown key"),
    ],
)
def test_malformed_rules_are_refused_when_the_catalogue_loads(spec: str, complaint: str) -> None:
    text = f'[a]\npoints = 1\nfields = {{ t = "string", n = "integer" }}\n{spec}\n'
    with pytest.raises(CatalogueError, match=complaint):
        parse_catalogue(text, "actions.toml")


def test_max_age_needs_a_time_field_and_utc_day_is_reserved() -> None:
    with pytest.raises(CatalogueError, match="needs a unix_seconds field"):
        parse_catalogue('[a]\npoints = 1\nfields = { t = "string" }\nmax_age_s = 5\n', "x")
    with pytest.raises(CatalogueError, match="may not be called"):
        parse_catalogue('[a]\npoints = 1\nfields = { utc_day = "string" }\n', "x")
