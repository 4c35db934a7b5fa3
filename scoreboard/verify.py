"""`scoreboard verify`: the scoring invariant, checked against the live backends.

For every user, score = SUM(score_delta) over their completed actions (Postgres), and the Redis
board holds exactly the Postgres scores of every user with a positive score.
"""

from __future__ import annotations

from dataclasses import dataclass

from scoreboard.adapters.interfaces import ActionLog, Board


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked_users: int
    score_mismatches: tuple[tuple[int, int, int], ...]
    board_mismatches: tuple[tuple[int, int | None, int | None], ...]

    @property
    def ok(self) -> bool:
        return not self.score_mismatches and not self.board_mismatches

    def lines(self) -> list[str]:
        lines = [
            f"user {user_id}: score {score} != sum of completed deltas {total}"
            for user_id, score, total in self.score_mismatches
        ]
        lines += [
            f"user {user_id}: postgres {pg} != redis {rd}"
            for user_id, pg, rd in self.board_mismatches
        ]
        verdict = "OK" if self.ok else "FAILED"
        lines.append(
            f"{verdict}: {self.checked_users} users checked, {len(self.score_mismatches)} score "
            f"mismatches, {len(self.board_mismatches)} board mismatches"
        )
        return lines


async def verify(store: ActionLog, board: Board) -> VerifyReport:
    score_mismatches = await store.score_discrepancies()
    postgres_scores = {entry.user_id: entry.score for entry in await store.board_entries()}
    redis_scores = await board.scores()
    board_mismatches = sorted(
        (user_id, postgres_scores.get(user_id), redis_scores.get(user_id))
        for user_id in postgres_scores.keys() | redis_scores.keys()
        if postgres_scores.get(user_id) != redis_scores.get(user_id)
    )
    return VerifyReport(
        checked_users=len(postgres_scores.keys() | redis_scores.keys()),
        score_mismatches=tuple(sorted(score_mismatches)),
        board_mismatches=tuple(board_mismatches),
    )
