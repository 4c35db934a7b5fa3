"""The OAuth part of the store against PostgreSQL (the same tests run against SQLite in
test_embedded_oauth_store.py): clients, codes consumed once, refresh-token families, revocation
and the deny-list."""

from __future__ import annotations

import uuid

import pytest
import trio

from scoreboard.actors import janitor
from scoreboard.adapters.interfaces import ClientExists, Purged, Store
from scoreboard.auth.clients import new_client
from scoreboard.config import JanitorConfig
from scoreboard.records import AuthorizationCodeRecord, GrantRecord, GrantRevoked, Revocation
from tests.adapters.test_postgres import bridge, new_user, store

__all__ = ["bridge", "store"]

NOW = 1_764_500_000_000
LATER = NOW + 900_000


async def code_for(
    store: Store, user_id: int, client_id: str = "app", expires_at_ms: int = NOW + 60_000
) -> AuthorizationCodeRecord:
    code = AuthorizationCodeRecord(
        code_hash=uuid.uuid4().hex,
        grant=GrantRecord(str(uuid.uuid4()), client_id, user_id, "read write"),
        redirect_uri="https://app.example.com/cb",
        code_challenge="c" * 43,
        code_challenge_method="S256",
        expires_at_ms=expires_at_ms,
    )
    await store.save_authorization_code(code)
    return code


async def test_clients_are_added_listed_and_removed(store: Store) -> None:
    record, secret = new_client("app-one", "confidential", ["https://app.example.com/cb"])
    assert secret is not None
    await store.add_client(record)
    with pytest.raises(ClientExists):
        await store.add_client(record)
    assert await store.get_client("app-one") == record
    assert await store.list_clients() == [record]
    assert await store.remove_client("app-one", LATER) == []
    assert await store.get_client("app-one") is None
    assert await store.remove_client("app-one", LATER) is None


async def test_a_code_is_redeemed_once_then_reuse_revokes_its_grant(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    code = await code_for(store, user_id)
    assert await store.redeem_authorization_code(code.code_hash, "other", NOW, LATER) is None
    assert await store.redeem_authorization_code(code.code_hash, "app", NOW, LATER) == code
    assert await store.add_refresh_token(code.grant.grant_id, "r1", NOW, LATER)
    reused = await store.redeem_authorization_code(code.code_hash, "app", NOW, LATER)
    assert reused == GrantRevoked(code.grant.grant_id)
    assert await store.rotate_refresh_token("r1", "app", NOW, LATER) is None
    assert Revocation("grant", code.grant.grant_id, LATER) in await store.revocations(NOW)


async def test_an_expired_or_unknown_code_is_nothing(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    code = await code_for(store, user_id)
    assert await store.redeem_authorization_code(code.code_hash, "app", NOW + 60_000, LATER) is None
    assert await store.redeem_authorization_code("unknown", "app", NOW, LATER) is None


async def test_concurrent_redemptions_have_one_winner(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    code = await code_for(store, user_id)
    outcomes: list[object] = []

    async def redeem() -> None:
        outcomes.append(await store.redeem_authorization_code(code.code_hash, "app", NOW, LATER))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(redeem)
    assert outcomes.count(code) == 1
    assert sum(isinstance(outcome, GrantRevoked) for outcome in outcomes) >= 1


async def test_refresh_tokens_rotate_and_a_rotated_one_revokes_the_family(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    code = await code_for(store, user_id)
    grant = code.grant
    assert await store.add_refresh_token(grant.grant_id, "r1", NOW, LATER)
    assert await store.rotate_refresh_token("r1", "other-client", NOW, LATER) is None
    assert await store.rotate_refresh_token("r1", "app", NOW, LATER) == grant
    assert await store.add_refresh_token(grant.grant_id, "r2", NOW, LATER)
    assert await store.find_refresh_token("r1") == grant
    assert await store.rotate_refresh_token("r1", "app", NOW, LATER) == GrantRevoked(grant.grant_id)
    assert await store.rotate_refresh_token("r2", "app", NOW, LATER) is None
    assert not await store.add_refresh_token(grant.grant_id, "r3", NOW, LATER)


async def test_an_expired_refresh_token_does_not_rotate(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    grant = (await code_for(store, user_id)).grant
    assert await store.add_refresh_token(grant.grant_id, "r1", NOW, NOW + 1000)
    assert await store.rotate_refresh_token("r1", "app", NOW + 1000, LATER) is None


async def test_revocations_are_listed_until_they_expire(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    grant = (await code_for(store, user_id)).grant
    await store.revoke(grant_ids=[grant.grant_id], jtis=["jti-1"], expires_at_ms=LATER)
    assert sorted(await store.revocations(NOW), key=lambda r: r.kind) == [
        Revocation("grant", grant.grant_id, LATER),
        Revocation("jti", "jti-1", LATER),
    ]
    assert await store.revocations(LATER) == []


async def test_disabling_a_user_or_removing_a_client_revokes_their_grants(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    user = await store.get_user(user_id)
    assert user is not None
    record, _secret = new_client("app-two", "public", ["https://app.example.com/cb"])
    await store.add_client(record)
    by_client = (await code_for(store, user_id, "app-two")).grant.grant_id
    other = (await code_for(store, user_id, "app")).grant.grant_id
    assert await store.remove_client("app-two", LATER) == [by_client]
    assert await store.disable_user(user.username, LATER) == [other]
    assert (await store.get_user(user_id)).disabled  # type: ignore[union-attr]
    assert await store.disable_user("nobody-at-all", LATER) is None


async def test_expired_codes_tokens_and_revocations_are_purged_in_batches(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    unused = (await code_for(store, user_id, expires_at_ms=NOW + 30_000)).grant.grant_id
    redeemed = await code_for(store, user_id)
    grant = redeemed.grant.grant_id
    assert await store.redeem_authorization_code(redeemed.code_hash, "app", NOW, LATER)
    assert await store.add_refresh_token(grant, "r1", NOW, LATER)
    assert await store.rotate_refresh_token("r1", "app", NOW, LATER)
    assert await store.add_refresh_token(grant, "r2", NOW, LATER + 10)
    await store.revoke(grant_ids=[], jtis=["jti-1"], expires_at_ms=LATER)
    await store.revoke(grant_ids=[], jtis=["jti-2"], expires_at_ms=LATER + 10)
    # Nothing has expired yet.
    for what in ("codes", "refresh_tokens", "revocations"):
        assert await store.purge_expired(what, NOW + 1, 10) == Purged(0, 0)
    # Codes, oldest first, one per batch: the unused one takes its grant along; the redeemed
    # one's grant keeps its refresh tokens.
    assert await store.purge_expired("codes", NOW + 60_001, 1) == Purged(1, 1)
    assert not await store.add_refresh_token(unused, "r-unused", NOW, LATER)  # no such grant
    assert await store.purge_expired("codes", NOW + 60_001, 1) == Purged(1, 0)
    assert await store.purge_expired("codes", NOW + 60_001, 1) == Purged(0, 0)
    assert await store.redeem_authorization_code(redeemed.code_hash, "app", NOW, LATER) is None
    # Refresh tokens: the rotated r1 goes first, then r2 with the grant.
    assert await store.purge_expired("refresh_tokens", LATER + 1, 10) == Purged(1, 0)
    assert await store.find_refresh_token("r1") is None
    assert await store.find_refresh_token("r2") == redeemed.grant
    assert await store.purge_expired("refresh_tokens", LATER + 11, 10) == Purged(1, 1)
    assert await store.find_refresh_token("r2") is None
    assert not await store.add_refresh_token(grant, "r3", NOW, LATER)
    # The deny-list.
    assert await store.purge_expired("revocations", LATER + 1, 10) == Purged(1, 0)
    assert await store.revocations(NOW) == [Revocation("jti", "jti-2", LATER + 10)]


async def test_a_janitor_sweep_empties_a_backlog_batch_by_batch(store: Store) -> None:
    user_id = await new_user(store)  # type: ignore[arg-type]
    now = NOW + 3_600_000
    config = JanitorConfig(batch_size=3, retention_s=600)
    for _ in range(7):  # expired longer ago than the retention, with their refresh tokens
        grant = (await code_for(store, user_id, expires_at_ms=now - 700_000)).grant.grant_id
        assert await store.add_refresh_token(grant, uuid.uuid4().hex, NOW, now - 600_001)
    # Expired, but within the retention: a reuse would still be caught.
    recent = await code_for(store, user_id, expires_at_ms=now - 500_000)
    await store.revoke(grant_ids=[], jtis=["expired-jti"], expires_at_ms=now - 1)
    deleted = await janitor.sweep(store, config, now)
    assert deleted == {"codes": 7, "refresh_tokens": 7, "revocations": 1, "grants": 7}
    assert await janitor.sweep(store, config, now) == {
        "codes": 0, "refresh_tokens": 0, "revocations": 0, "grants": 0
    }  # fmt: skip
    assert await store.add_refresh_token(recent.grant.grant_id, "r-recent", NOW, LATER)
