"""The audit trail's share of the edge: each refusal of a client's action (a 4xx on
`POST /api/v1/actions/perform`, or a refused `action` frame on the WebSocket) is handed to the
auditor actor, which writes them in batches (docs/audit.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from scoreboard import clock
from scoreboard.actors import auditor
from scoreboard.http.errors import RequestRejected
from scoreboard.http.services import Services
from scoreboard.records import EdgeRefusal


def audit_refusal(
    services: Services,
    rejection: RequestRejected,
    *,
    channel: Literal["http", "websocket"],
    user_id: int | None,
    attempted: object,
    ip: str,
    user_agent: str,
    headers: Mapping[str, str],
) -> None:
    """Hand a refusal of the client's (a 4xx; an outage's 503 is ours) to the auditor, never
    waiting. `attempted` is what the client sent, as far as it was read: its action type and
    nonce are kept when they are strings."""
    if not 400 <= rejection.status < 500:
        return
    fields = attempted if isinstance(attempted, Mapping) else {}
    action_type, nonce = fields.get("action_type"), fields.get("nonce")
    auditor.record(
        services.auditor,
        EdgeRefusal(
            user_id=user_id,
            action_type=action_type if isinstance(action_type, str) else None,
            nonce=nonce if isinstance(nonce, str) else None,
            channel=channel,
            status_code=rejection.status,
            error=rejection.error,
            message=rejection.message or rejection.error,
            ip=ip,
            user_agent=user_agent,
            headers=headers,
            refused_at_ms=clock.now_ms(),
        ),
    )
