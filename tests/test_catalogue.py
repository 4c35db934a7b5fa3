from pathlib import Path

import pytest

from scoreboard.catalogue import InvalidActionData, load_catalogue

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
    }
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
