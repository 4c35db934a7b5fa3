"""The connection counts' one owner: WebSockets counted per user and per address against their
caps, a refusal counting nothing, each count released once."""

from __future__ import annotations

import pytest

from scoreboard.http.connections import ConnectionCounts, TooManyConnections


def test_websockets_are_counted_per_address_and_user_up_to_their_caps() -> None:
    counts = ConnectionCounts(max_per_user=2, max_per_address=3)
    with counts.hold_address("10.0.0.1"), counts.hold_user(7), counts.hold_user(7):
        with pytest.raises(TooManyConnections):
            counts.hold_user(7)
        with counts.hold_address("10.0.0.1"), counts.hold_address("10.0.0.1"):
            with pytest.raises(TooManyConnections):
                counts.hold_address("10.0.0.1")
            assert counts.per_ip == {"10.0.0.1": 3}
            assert counts.websockets == 3
        assert counts.per_user == {7: 2}
        assert counts.per_ip == {"10.0.0.1": 1}
    assert not counts.per_ip
    assert not counts.per_user


def test_a_held_count_is_released_once() -> None:
    counts = ConnectionCounts(max_per_user=5, max_per_address=5)
    held = counts.hold_user(1)
    other = counts.hold_user(1)
    with held:
        pass
    held.__exit__(None, None, None)
    assert counts.per_user == {1: 1}
    with other:
        pass
    assert counts.per_user == {}


def test_the_process_cap_and_the_close_codes() -> None:
    counts = ConnectionCounts(max_per_user=1, max_per_address=1)
    assert counts.admit(2)
    assert counts.admit(2)
    assert not counts.admit(2)
    counts.connection_closed()
    assert counts.open == 1
    counts.websocket_closed(1000)
    counts.websocket_closed(1000)
    assert counts.closes[1000] == 2
    assert counts.closes[1013] == 0
