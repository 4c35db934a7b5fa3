"""The OAuth store contract (test_oauth_store.py) against SQLite."""

from __future__ import annotations

from tests.adapters.test_embedded_store import data_dir, store
from tests.adapters.test_oauth_store import (
    test_a_code_is_redeemed_once_then_reuse_revokes_its_grant,
    test_a_janitor_sweep_empties_a_backlog_batch_by_batch,
    test_an_expired_or_unknown_code_is_nothing,
    test_an_expired_refresh_token_does_not_rotate,
    test_clients_are_added_listed_and_removed,
    test_concurrent_redemptions_have_one_winner,
    test_disabling_a_user_or_removing_a_client_revokes_their_grants,
    test_expired_codes_tokens_and_revocations_are_purged_in_batches,
    test_refresh_tokens_rotate_and_a_rotated_one_revokes_the_family,
    test_revocations_are_listed_until_they_expire,
)

__all__ = [
    "data_dir",
    "store",
    "test_a_code_is_redeemed_once_then_reuse_revokes_its_grant",
    "test_a_janitor_sweep_empties_a_backlog_batch_by_batch",
    "test_an_expired_or_unknown_code_is_nothing",
    "test_an_expired_refresh_token_does_not_rotate",
    "test_clients_are_added_listed_and_removed",
    "test_concurrent_redemptions_have_one_winner",
    "test_disabling_a_user_or_removing_a_client_revokes_their_grants",
    "test_expired_codes_tokens_and_revocations_are_purged_in_batches",
    "test_refresh_tokens_rotate_and_a_rotated_one_revokes_the_family",
    "test_revocations_are_listed_until_they_expire",
]
