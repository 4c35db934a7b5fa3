"""The WebSocket frames the server sends (docs/api.md, section 4), as compact JSON text.

The hub encodes each leaderboard snapshot once, JSON and WebSocket framing both, and hands the
same `Frame` to every mailbox (and a user's own frames of one turn, as one `Batch`); the HTTP
layer builds its own frames (auth_ok, pong, error, accepted action results) with the same
helpers so every frame on the wire looks alike.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scoreboard import json_codec
from scoreboard.records import ActionFinished, RankedEntry, ScoreChanged

# A final text frame (FIN and opcode 1, RFC 6455 section 5.2). Server-to-client frames are not
# masked and the live path negotiates no extension, so a message has the same bytes on every
# connection; the header is built here rather than by wsproto, whose general framing was a tenth
# of the hub's time when delivering users' own frames (one frame per event).
_FIN_TEXT = 0x81
_SHORT = struct.Struct("!BB")
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One text message as the server sends it: its JSON, and its bytes on the wire (a final
    uncompressed text frame), built once however many sockets it goes to."""

    text: str
    wire: bytes


def outgoing(text: str) -> Frame:
    payload = text.encode()
    length = len(payload)
    if length < 126:
        header = _SHORT.pack(_FIN_TEXT, length)
    elif length < 1 << 16:
        header = _MEDIUM.pack(_FIN_TEXT, 126, length)
    else:
        header = _LONG.pack(_FIN_TEXT, 127, length)
    return Frame(text, header + payload)


@dataclass(frozen=True, slots=True, eq=False)
class Batch:
    """Frames for one connection that are ready together (a user's frames from one turn of the
    hub), and their bytes back to back: one `send` writes them all, each still its own complete
    message. The hub builds it once for all of the user's connections."""

    frames: tuple[Frame, ...]
    wire: bytes


def batch(frames: Sequence[Frame]) -> Batch:
    return Batch(tuple(frames), b"".join(frame.wire for frame in frames))


def rfc3339_ms(epoch_ms: int) -> str:
    """Unix milliseconds as an RFC 3339 UTC string, e.g. `2025-11-13T10:30:00.000Z`."""
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_frame(frame: dict[str, Any]) -> str:
    """One frame as compact JSON text."""
    return json_codec.dumps_text(frame)


def leaderboard_data(entries: Iterable[RankedEntry], updated_at_ms: int) -> dict[str, Any]:
    """The `data` of a `leaderboard_update` frame."""
    return {
        "leaderboard": [entry.as_json() for entry in entries],
        "timestamp": rfc3339_ms(updated_at_ms),
    }


def leaderboard_frame(entries: Iterable[RankedEntry], updated_at_ms: int) -> str:
    data = leaderboard_data(entries, updated_at_ms)
    return encode_frame({"type": "leaderboard_update", "data": data})


def score_update_frame(event: ScoreChanged) -> str:
    return encode_frame(
        {
            "type": "score_update",
            "data": {
                "user_id": event.user_id,
                "username": event.username,
                "old_score": event.old_score,
                "new_score": event.new_score,
                "rank": event.rank,
                "rank_change": event.rank_change,
            },
        }
    )


def action_result_data(event: ActionFinished) -> dict[str, Any]:
    """The `data` of an `action_result` frame for a finished action."""
    outcome = event.outcome
    data: dict[str, Any] = {
        "action_id": str(event.action_id),
        "nonce": event.nonce,
        "status": outcome.status,
        "score_delta": outcome.score_delta,
        "new_score": outcome.new_score,
        "error": outcome.error,
    }
    if outcome.message is not None:
        data["message"] = outcome.message
    if outcome.retry_after_s is not None:
        data["retry_after"] = outcome.retry_after_s
    return data


def action_result_frame(event: ActionFinished) -> str:
    return encode_frame({"type": "action_result", "data": action_result_data(event)})
