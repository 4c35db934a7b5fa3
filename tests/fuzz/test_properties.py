"""Properties of the inputs an attacker controls most: the action body, the registration, the
login form and WebSocket frames. Whatever hypothesis generates, the server answers with one of the
statuses the contract gives (never a 500), logs no traceback (the `server_log` fixture), keeps a
WebSocket open, and stores nothing for an input it refused."""

from __future__ import annotations

import json
import string
import time
import uuid
from typing import Any, TypeGuard

import httpx
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url

from scoreboard.intake import NONCE_PATTERN
from tests.fuzz.conftest import FUZZ_SETTINGS, REQUEST_TIMEOUT_S, FuzzServer
from tests.http.conftest import PASSWORD
from tests.http.oauth_client import hidden_fields, new_authorization

EXAMPLES = settings(FUZZ_SETTINGS, max_examples=40)
MAX_FRAME_BYTES = 4096
SETTLE_TIMEOUT_S = 15

# Text as attackers write it: controls, format characters, unpaired surrogates, long runs.
hostile_text = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from("\x00\x1b\u0085\u200b\u202e\u2066\ufeff\ud800\udfff²٣"),
    ),
    max_size=80,
)
# What a form can carry (an unpaired surrogate cannot be encoded as UTF-8).
form_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(hostile_text, children, max_size=4)
    ),
    max_leaves=12,
)


def nonce_like() -> st.SearchStrategy[Any]:
    return st.one_of(st.from_regex(NONCE_PATTERN, fullmatch=True), hostile_text, json_scalars)


@st.composite
def action_bodies(draw: st.DrawFn, catalogue_types: dict[str, Any]) -> Any:
    """Mostly action-shaped objects with something off (or nothing), sometimes anything."""
    names = list(catalogue_types)
    action_type = draw(st.one_of(st.sampled_from(names), hostile_text, json_scalars))
    fields = dict(catalogue_types[action_type].fields) if action_type in catalogue_types else {}
    data = {
        name: draw(
            st.one_of(
                st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=20)
                if kind == "string"
                else st.integers(min_value=0, max_value=2**31 - 1),
                json_values,
            )
        )
        for name, kind in fields.items()
        if draw(st.integers(0, 9))  # a field left out now and then
    }
    data.update(draw(st.dictionaries(hostile_text, json_values, max_size=2)))
    body: dict[str, Any] = {
        "action_type": action_type,
        "action_data": draw(st.one_of(st.just(data), json_values)),
        "nonce": draw(nonce_like()),
    }
    for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=2, unique=True)):
        del body[key]
    body.update(draw(st.dictionaries(hostile_text, json_values, max_size=1)))
    return draw(st.one_of(st.just(body), st.just(body), st.just(body), json_values))


def encoded(body: Any) -> bytes:
    """JSON as a client sends it (non-ASCII escaped: an unpaired surrogate travels as `\\ud800`)."""
    return json.dumps(body).encode()


def with_fresh_nonce(body: Any) -> tuple[Any, str | None]:
    """A usable nonce replaced by one of its own, so that no example replays another."""
    if isinstance(body, dict) and isinstance(body.get("nonce"), str):
        if NONCE_PATTERN.fullmatch(body["nonce"]):
            body = {**body, "nonce": f"fz-{uuid.uuid4().hex}"}
        return body, body["nonce"]
    return body, None


def wait_until_stored(server: FuzzServer, nonces: list[str]) -> None:
    store = server.services.store
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    for nonce in nonces:
        while server.call(store.find_action_by_nonce, server.user_id, nonce) is None:
            assert time.monotonic() < deadline, f"accepted action {nonce} was never stored"
            time.sleep(0.05)


def assert_nothing_stored(server: FuzzServer, refused: list[str]) -> None:
    store = server.services.store
    stored = [n for n in refused if server.call(store.find_action_by_nonce, server.user_id, n)]
    assert stored == [], "refused actions were stored"


def test_any_action_body_is_answered_and_a_refused_one_stores_nothing(
    fuzz_server: FuzzServer,
) -> None:
    accepted: list[str] = []
    refused: list[str] = []
    catalogue = fuzz_server.services.catalogue.types

    @EXAMPLES
    @given(body=action_bodies(catalogue))
    def post(body: Any) -> None:
        body, nonce = with_fresh_nonce(body)
        response = httpx.post(
            f"{fuzz_server.url}/api/v1/actions/perform",
            content=encoded(body),
            headers={**fuzz_server.auth, "Content-Type": "application/json"},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert response.status_code in (202, 400, 413), response.text
        assert response.headers["content-type"].startswith("application/json")
        if nonce is not None and NONCE_PATTERN.fullmatch(nonce):
            (accepted if response.status_code == 202 else refused).append(nonce)

    post()
    wait_until_stored(fuzz_server, accepted)
    assert_nothing_stored(fuzz_server, refused)


@st.composite
def registrations(draw: st.DrawFn) -> Any:
    username = st.from_regex(r"[A-Za-z0-9_.-]{3,32}", fullmatch=True)
    email = st.emails().filter(lambda e: len(e) <= 254)
    password = st.text(min_size=10, max_size=128)
    body = {
        "username": draw(st.one_of(username, username, hostile_text, json_scalars)),
        "email": draw(st.one_of(email, hostile_text, json_scalars)),
        "password": draw(st.one_of(password, hostile_text, json_scalars)),
    }
    for key in draw(st.lists(st.sampled_from(sorted(body)), max_size=1)):
        del body[key]
    body.update(draw(st.dictionaries(hostile_text, json_values, max_size=1)))
    return draw(st.one_of(st.just(body), st.just(body), json_values))


def normalized(username: str) -> str:
    return username.casefold()


def storable(text: object) -> TypeGuard[str]:
    """Text a store can be asked about (no NUL, no unpaired surrogate)."""
    if not isinstance(text, str) or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_any_registration_is_answered_and_a_refused_one_stores_no_account(
    fuzz_server: FuzzServer,
) -> None:
    registered: set[str] = {normalized(fuzz_server.username)}
    store = fuzz_server.services.store

    @EXAMPLES
    @given(body=registrations())
    def register(body: Any) -> None:
        response = httpx.post(
            f"{fuzz_server.url}/api/v1/users",
            content=encoded(body),
            headers={"Content-Type": "application/json"},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert response.status_code in (201, 400, 409, 413), response.text
        username = body.get("username") if isinstance(body, dict) else None
        if response.status_code == 201:
            assert isinstance(username, str)
            registered.add(normalized(username))
        elif storable(username) and normalized(username) not in registered:
            assert fuzz_server.call(store.get_user_by_username, username) is None, body

    register()


@st.composite
def login_forms(draw: st.DrawFn, fields: dict[str, str], username: str) -> dict[str, str]:
    """The form a server rendered, with some of it altered, and some credentials."""
    form = dict(fields)
    for name in draw(st.lists(st.sampled_from(sorted(form)), max_size=3, unique=True)):
        change = draw(st.sampled_from(["drop", "text", "digits"]))
        if change == "drop":
            del form[name]
        elif change == "text":
            form[name] = draw(form_text)
        else:  # non-ASCII digits where the form token has its expiry
            form[name] = form[name].replace("1", draw(st.sampled_from("²٣１")), 1)
    form["username"] = draw(st.one_of(st.just(username), form_text))
    form["password"] = draw(st.one_of(st.just("wrong password!"), form_text))
    form.update(draw(st.dictionaries(form_text, form_text, max_size=2)))
    return form


def test_any_login_form_is_answered_and_a_refused_one_issues_no_code(
    fuzz_server: FuzzServer,
) -> None:
    authorization = new_authorization(fuzz_server.thread.handle)  # type: ignore[arg-type]
    page = httpx.get(
        f"{fuzz_server.url}/api/v1/oauth/authorize",
        params=authorization.params(),
        timeout=REQUEST_TIMEOUT_S,
    )
    assert page.status_code == 200, page.text
    fields = hidden_fields(page.text)

    @EXAMPLES
    @given(form=login_forms(fields, fuzz_server.username))
    def sign_in(form: dict[str, str]) -> None:
        response = httpx.post(
            f"{fuzz_server.url}/api/v1/oauth/authorize", data=form, timeout=REQUEST_TIMEOUT_S
        )
        assert response.status_code in (200, 302, 400, 401), response.text
        if response.status_code == 302:
            # Only an unaltered form with the right password signs in; never here.
            assert "code=" not in response.headers["Location"], form
            assert "error=" in response.headers["Location"], form
        elif response.headers["content-type"].startswith("application/json"):
            # A parameter outside RFC 6749's grammar is refused before any page.
            assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
        else:
            assert response.headers["content-type"].startswith("text/html"), response

    sign_in()
    # The untouched form with the right password still signs in.
    response = httpx.post(
        f"{fuzz_server.url}/api/v1/oauth/authorize",
        data={**fields, "username": fuzz_server.username, "password": PASSWORD},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert response.status_code == 302, response.text
    assert "code=" in response.headers["Location"]


@st.composite
def frames(draw: st.DrawFn, catalogue_types: dict[str, Any]) -> str | bytes:
    kind = draw(st.sampled_from(["action", "typed", "json", "text", "binary"]))
    if kind == "action":
        body = draw(action_bodies(catalogue_types))
        message: Any = {"type": "action", **body} if isinstance(body, dict) else body
    elif kind == "typed":
        message = {
            "type": draw(st.one_of(st.sampled_from(["auth", "ping", "action"]), hostile_text)),
            **draw(st.dictionaries(hostile_text, json_values, max_size=3)),
        }
    elif kind == "json":
        message = draw(json_values)
    elif kind == "text":
        return draw(st.text(st.characters(exclude_categories=["Cs"]), max_size=200))
    else:
        return draw(st.binary(max_size=200))
    return json.dumps(message)


def allowed_close(frame: str | bytes) -> int | None:
    """The close code the contract gives for this frame, if it may close the socket: a bad
    token in an `auth` message (4401), a frame over the 4 KiB cap (1009)."""
    if len(frame.encode() if isinstance(frame, str) else frame) > MAX_FRAME_BYTES:
        return 1009
    try:
        message = json.loads(frame)
    except ValueError:
        return None
    return 4401 if isinstance(message, dict) and message.get("type") == "auth" else None


async def exchange(server: FuzzServer, frame: str | bytes) -> list[dict[str, Any]]:
    """Auth, the frame, then a ping: the frames the server sent up to the pong (the socket must
    still be open then), or up to the close the contract allows for this frame."""
    url = server.url.replace("http://", "ws://", 1) + "/api/v1/ws"
    marker = uuid.uuid4().hex
    answers: list[dict[str, Any]] = []
    with trio.fail_after(REQUEST_TIMEOUT_S):
        async with open_websocket_url(
            url, extra_headers=[(b"Origin", server.url.encode())], disconnect_timeout=2
        ) as socket:
            await socket.send_message(json.dumps({"type": "auth", "token": server.token}))
            await socket.send_message(frame)
            await socket.send_message(json.dumps({"type": "ping", "timestamp": marker}))
            while True:
                try:
                    answer = json.loads(await socket.get_message())
                except ConnectionClosed as closed:
                    reason = closed.reason
                    break
                if answer.get("type") == "pong" and answer.get("timestamp") == marker:
                    return answers
                answers.append(answer)
    assert reason is not None, f"closed without a reason after {frame!r}"
    assert reason.code == allowed_close(frame), f"closed {reason} after {frame!r}"
    return answers


ANSWER_TYPES = ("auth_ok", "leaderboard_update", "score_update", "action_result", "error", "pong")


def test_any_websocket_frame_is_answered_and_the_socket_stays_open(
    fuzz_server: FuzzServer,
) -> None:
    refused: list[str] = []
    queued: list[str] = []
    catalogue = fuzz_server.services.catalogue.types

    @EXAMPLES
    @given(frame=frames(catalogue))
    def send(frame: str | bytes) -> None:
        if isinstance(frame, str) and frame.startswith("{"):
            body, _nonce = with_fresh_nonce(json.loads(frame))
            frame = json.dumps(body)
        for answer in trio.run(exchange, fuzz_server, frame):
            assert answer["type"] in ANSWER_TYPES, answer
            if answer["type"] != "action_result":
                continue
            data = answer["data"]
            nonce = data.get("nonce")
            if isinstance(nonce, str) and NONCE_PATTERN.fullmatch(nonce):
                # Refused before queueing: no action id; anything else was queued.
                (refused if data["action_id"] is None else queued).append(nonce)

    send()
    wait_until_stored(fuzz_server, queued)
    assert_nothing_stored(fuzz_server, [nonce for nonce in refused if nonce not in queued])
