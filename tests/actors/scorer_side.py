"""The scorer's side of its inbox, as the pure-logic tests of the actors upstream see it."""

from __future__ import annotations

import trio

from scoreboard.actors.messages import Barrier, Score, ScorerMsg, Unjudged


async def handed_over(scorer: trio.MemoryReceiveChannel[ScorerMsg]) -> Score | Unjudged:
    """The next decision or unjudged action; barriers on the way are answered at once, as an
    idle scorer would."""
    while True:
        msg = await scorer.receive()
        match msg:
            case Barrier(reply):
                reply.send_nowait(None)
            case Score() | Unjudged():
                return msg


async def answering_barriers(scorer: trio.MemoryReceiveChannel[ScorerMsg]) -> Score:
    """The next decision (an unjudged action here is a failure of the test)."""
    msg = await handed_over(scorer)
    assert isinstance(msg, Score), msg
    return msg
