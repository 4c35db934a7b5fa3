"""The frame codec the hub and the HTTP layer share."""

from __future__ import annotations

import json
import uuid

from wsproto.connection import CLIENT, SERVER, Connection
from wsproto.events import TextMessage

from scoreboard.actors.frames import (
    action_result_frame,
    batch,
    leaderboard_frame,
    outgoing,
    rfc3339_ms,
)
from scoreboard.records import ActionFinished, Outcome, RankedEntry


def test_times_are_rfc3339_utc_with_milliseconds() -> None:
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1_764_500_000_123) == "2025-11-30T10:53:20.123Z"


def test_a_leaderboard_frame_is_compact_json_of_the_contract_shape() -> None:
    frame = leaderboard_frame([RankedEntry(1, 7, "alice", 110)], 0)
    assert frame == (
        '{"type":"leaderboard_update","data":{"leaderboard":'
        '[{"rank":1,"user_id":7,"username":"alice","score":110}],'
        '"timestamp":"1970-01-01T00:00:00.000Z"}}'
    )


def test_an_action_result_carries_message_and_retry_after_only_when_present() -> None:
    action_id = uuid.uuid4()
    completed = ActionFinished(7, action_id, "n-1", Outcome("completed", 10, 110))
    assert json.loads(action_result_frame(completed))["data"] == {
        "action_id": str(action_id),
        "nonce": "n-1",
        "status": "completed",
        "score_delta": 10,
        "new_score": 110,
        "error": None,
    }
    limited = ActionFinished(
        7, action_id, "n-2", Outcome("rejected", 0, 100, "rate_limit_exceeded", "slow down", 4)
    )
    data = json.loads(action_result_frame(limited))["data"]
    assert (data["error"], data["message"], data["retry_after"]) == (
        "rate_limit_exceeded",
        "slow down",
        4,
    )


def test_a_frame_is_built_once_as_the_unmasked_uncompressed_text_frame_every_client_reads() -> None:
    client = Connection(CLIENT)
    for size in (0, 125, 126, 65_535, 65_536, 200_000):  # every length encoding of RFC 6455
        text = "é" * (size // 2) + "x" * (size % 2)
        frame = outgoing(text)
        assert frame.text == text
        assert frame.wire[0] == 0x81  # FIN, no RSV bit (nothing compressed), text
        assert not frame.wire[1] & 0x80  # a server's frames are not masked
        client.receive_data(frame.wire)
        (message,) = client.events()
        assert isinstance(message, TextMessage)
        assert (message.data, message.message_finished) == (text, True)


def test_a_frame_has_the_bytes_wsproto_would_send() -> None:
    server = Connection(SERVER)
    for size in (0, 1, 125, 126, 127, 65_535, 65_536, 70_000):
        text = "ü" * (size // 2) + "x" * (size % 2)
        assert outgoing(text).wire == server.send(TextMessage(data=text))


def test_a_batch_is_its_frames_back_to_back_each_a_message_of_its_own() -> None:
    client = Connection(CLIENT)
    texts = ["first", "é" * 200, "x" * 70_000, "last"]
    ready = batch([outgoing(text) for text in texts])
    assert [frame.text for frame in ready.frames] == texts
    client.receive_data(ready.wire)
    messages = list(client.events())
    assert [(m.data, m.message_finished) for m in messages] == [(t, True) for t in texts]  # type: ignore[attr-defined]
