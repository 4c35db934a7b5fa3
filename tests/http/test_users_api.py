"""`POST /api/v1/users` against the real server (contract §1): 201, bad fields, 409, 413, 415."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx

from scoreboard.server import ServerHandle

USERS = "/api/v1/users"
PASSWORD = "correct horse battery"


def registration(**changes: Any) -> dict[str, Any]:
    username = f"u{uuid.uuid4().hex[:12]}"
    return {
        "username": username,
        "email": f"{username}@example.com",
        "password": PASSWORD,
        **changes,
    }


def assert_oauth_error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    return body


def assert_invalid_request(response: httpx.Response, status: int = 400) -> None:
    body = assert_oauth_error(response, status, "invalid_request")
    assert isinstance(body["error_description"], str), body
    assert body["error_description"], body


async def test_register_answers_201_with_the_user(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    body = registration()
    response = await client.post(USERS, json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert created == {"user_id": created["user_id"], "username": body["username"]}
    assert isinstance(created["user_id"], int)
    # Boundaries that are allowed: 3 and 32 characters, every allowed character, 10 and 128
    # characters of password (any characters), a long dot-atom email.
    for allowed in (
        registration(username="a.b"),
        registration(username="A-Za-z0_9." + uuid.uuid4().hex[:22]),
        registration(password="x" * 10),
        registration(password="ü" * 128),
        registration(email=f"first.last+tag-{uuid.uuid4().hex[:8]}@sub.Example.ORG"),
    ):
        response = await client.post(USERS, json=allowed)
        assert response.status_code == 201, (allowed, response.text)


async def test_each_bad_field_is_400_invalid_request(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    bad_fields: list[dict[str, Any]] = [
        {"username": "ab"},
        {"username": "a" * 33},
        {"username": "has space"},
        {"username": "semi;colon"},
        {"username": "ünï"},
        {"username": "trailing\n"},
        {"username": ""},
        {"username": 12345},
        {"username": None},
        {"username": ["abc"]},
        {"email": "not-an-email"},
        {"email": "a@b"},
        {"email": "@example.com"},
        {"email": "a@"},
        {"email": "a b@example.com"},
        {"email": "a@exa mple.com"},
        {"email": "a..b@example.com"},
        {"email": "x" * 65 + "@example.com"},
        {"email": "a@" + "b" * 250 + ".com"},
        {"email": "a@example.com\n"},
        {"email": 17},
        {"email": None},
        {"password": "x" * 9},
        {"password": "x" * 129},
        {"password": ""},
        {"password": 1234567890},
        {"password": None},
    ]
    for change in bad_fields:
        response = await client.post(USERS, json=registration(**change))
        assert_invalid_request(response)
        field = next(iter(change))
        assert field in response.json()["error_description"], (change, response.text)
    # Missing fields.
    for field in ("username", "email", "password"):
        body = registration()
        del body[field]
        response = await client.post(USERS, json=body)
        assert_invalid_request(response)
        assert field in response.json()["error_description"], response.text
    assert_invalid_request(await client.post(USERS, json={}))
    # Unknown fields: nobody registers with a score, an id or admin rights.
    for extra in ({"score": 1000}, {"user_id": 1}, {"is_admin": True}, {"scope": "write"}):
        response = await client.post(USERS, json=registration(**extra))
        assert_invalid_request(response)
        assert next(iter(extra)) in response.json()["error_description"], response.text
    # Not an object, not JSON.
    for raw in (b"[]", b'"name"', b"null", b"{", b"", b"\xff", b'{"username": NaN}'):
        response = await client.post(
            USERS, content=raw, headers={"Content-Type": "application/json"}
        )
        assert_invalid_request(response)
    utf16 = json.dumps(registration()).encode("utf-16")
    response = await client.post(USERS, content=utf16, headers={"Content-Type": "application/json"})
    assert_invalid_request(response)


async def test_a_taken_username_or_email_is_409(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    first = registration()
    assert (await client.post(USERS, json=first)).status_code == 201
    response = await client.post(USERS, json=registration(username=first["username"]))
    assert_oauth_error(response, 409, "username_taken")
    response = await client.post(USERS, json=registration(email=first["email"]))
    assert_oauth_error(response, 409, "email_taken")
    # The email's domain is compared without case.
    local, _, domain = first["email"].partition("@")
    response = await client.post(USERS, json=registration(email=f"{local}@{domain.upper()}"))
    assert_oauth_error(response, 409, "email_taken")
    # Both taken: one of the two conflicts.
    response = await client.post(USERS, json=first)
    assert response.status_code == 409, response.text
    assert response.json()["error"] in ("username_taken", "email_taken")


async def test_names_are_taken_in_every_case(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    username = f"Alice_{uuid.uuid4().hex[:8]}"
    first = registration(username=username, email=f"{username}@example.com")
    created = await client.post(USERS, json=first)
    assert created.status_code == 201, created.text
    assert created.json()["username"] == username  # shown as it was registered
    for other_case in (username.lower(), username.upper()):
        response = await client.post(USERS, json=registration(username=other_case))
        assert_oauth_error(response, 409, "username_taken")
    # The whole address, its local part too, is compared without case.
    response = await client.post(USERS, json=registration(email=first["email"].upper()))
    assert_oauth_error(response, 409, "email_taken")


async def test_a_body_that_is_not_json_is_415(
    server: ServerHandle, client: httpx.AsyncClient
) -> None:
    body = registration()
    response = await client.post(USERS, data=body)  # a form
    assert_invalid_request(response, 415)
    response = await client.post(
        USERS, content=json.dumps(body), headers={"Content-Type": "text/plain"}
    )
    assert_invalid_request(response, 415)
    response = await client.post(USERS, content=json.dumps(body).encode())  # no Content-Type
    assert_invalid_request(response, 415)
    # Nothing was registered by those.
    assert (await client.post(USERS, json=body)).status_code == 201


async def test_a_body_over_4_kib_is_413(server: ServerHandle, client: httpx.AsyncClient) -> None:
    body = registration()
    raw = json.dumps(body).encode()
    padded = raw[:-1] + b" " * (4097 - len(raw)) + b"}"
    headers = {"Content-Type": "application/json"}
    assert_invalid_request(await client.post(USERS, content=padded, headers=headers), 413)

    async def chunked() -> Any:
        yield padded[:2000]
        yield padded[2000:]

    request = client.build_request("POST", USERS, content=chunked(), headers=headers)
    assert "Content-Length" not in request.headers
    assert_invalid_request(await client.send(request), 413)
    assert (await client.post(USERS, json=body)).status_code == 201
