"""The OAuth part of the store against PostgreSQL (the same tests run against SQLite in
test_embedded_oauth_store.py): clients, codes consumed once, refresh-token families, revocation
and the deny-list."""

from __future__ import annotations

import uuid

import pytest
import trio

from scoreboard.adapters.interfaces import ClientExists, Store
from scoreboard.auth.clients import new_client
from scoreboard.model import AuthorizationCodeRecord, GrantRecord, GrantRevoked, Revocation
from tests.adapters.test_postgres import bridge, new_user, store

__all__ = ["bridge", "store"]

NOW = 1_764_500_000_000
LATER = NOW + 900_000


async def code_for(store: Store, user_id: int, client_id: str = "app") -> AuthorizationCodeRecord:
    code = AuthorizationCodeRecord(
        code_hash=uuid.uuid4().hex,
        grant=GrantRecord(str(uuid.uuid4()), client_id, user_id, "read write"),
        redirect_uri="https://app.example.com/cb",
        code_challenge="c" * 43,
        code_challenge_method="S256",
        expires_at_ms=NOW + 60_000,
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
