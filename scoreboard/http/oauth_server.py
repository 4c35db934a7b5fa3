"""The OAuth 2.0 authorization server (RFC 6749, 7636, 7009; RFC 9700's rules) on Authlib.

Authlib has no Quart integration and its hooks are synchronous, so every endpoint runs in a
worker thread (`trio.to_thread.run_sync`) on a request snapshot taken on the trio side
(`OAuthRequest`), and the hooks reach the async store with `trio.from_thread.run`. Responses
come back as Authlib's `(status, body, headers)` tuples, which `http/oauth.py` turns into Quart
responses.

What Authlib's defaults would get wrong here, and is set explicitly:

- PKCE: S256 only (no `plain`, also not as the default method), required for public clients, and
  a verifier without a challenge is refused (`S256CodeChallenge`).
- Codes live `oauth.code_ttl_s`, at most 60 s (Authlib stores none itself; we do), and are
  consumed atomically when presented (`Store.redeem_authorization_code`), before the redirect URI
  and the verifier are checked, so a wrong guess burns the code. A code presented again revokes
  its grant, and so every token issued from it.
- Refresh tokens rotate on every use (`INCLUDE_NEW_REFRESH_TOKEN`), atomically; a rotated one
  presented again revokes the whole family (`Store.rotate_refresh_token`).
- Access tokens are our RS256 JWTs (`issue_access_token`) carrying the grant id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from authlib.oauth2 import rfc6749, rfc7009, rfc7636
from authlib.oauth2.rfc6749.errors import InvalidRequestError, InvalidScopeError, OAuth2Error
from werkzeug.datastructures import Headers, MultiDict

from scoreboard import clock
from scoreboard.auth.clients import (
    DEFAULT_SCOPES,
    SCOPES,
    WEB_CLIENT_ID,
    scope_for_user,
    secret_matches,
    web_client,
)
from scoreboard.auth.tokens import AccessClaims, InvalidToken, issue_access_token
from scoreboard.auth.tokens import verify_access_token as verify_token
from scoreboard.http.services import Services
from scoreboard.records import (
    AuthorizationCodeRecord,
    GrantRecord,
    GrantRevoked,
    OAuthClientRecord,
    TokensRevoked,
    UserRecord,
)

T = TypeVar("T")

MAX_CODE_TTL_S = 60  # whatever oauth.code_ttl_s says (docs/api.md)
CONFIDENTIAL_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
TOKEN_AUTH_METHODS = [*CONFIDENTIAL_AUTH_METHODS, "none"]
GRANT_TYPES = ("authorization_code", "refresh_token")
# A revocation outlives every access token it could match (their lifetime and the clock leeway).
REVOCATION_MARGIN_S = 5

Response = tuple[int, Any, list[tuple[str, str]]]


def token_hash(token: str) -> str:
    """Codes and refresh tokens are stored as this, never as themselves."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class OAuthPayload(rfc6749.OAuth2Payload):  # type: ignore[misc]
    def __init__(self, values: MultiDict[str, str]) -> None:
        self._values = values

    @property
    def data(self) -> MultiDict[str, str]:
        return self._values

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        lists: defaultdict[str, list[str]] = defaultdict(list)
        for key in self._values:
            lists[key].extend(self._values.getlist(key))
        return lists


class OAuthRequest(rfc6749.OAuth2Request):  # type: ignore[misc]
    """What Authlib reads of a request, copied on the trio side: plain data a thread may read.
    The parameters come from the query of a GET and from the body of a POST, never both."""

    def __init__(
        self, method: str, uri: str, headers: Headers, params: MultiDict[str, str]
    ) -> None:
        # A copy that still matches header names case-insensitively.
        super().__init__(method=method, uri=uri, headers=Headers(headers))
        self._params = params
        self.payload = OAuthPayload(params)

    @property
    def args(self) -> MultiDict[str, str]:
        return self._params if self.method == "GET" else MultiDict()

    @property
    def form(self) -> MultiDict[str, str]:
        return self._params if self.method != "GET" else MultiDict()


class Client(rfc6749.ClientMixin):  # type: ignore[misc]
    def __init__(self, record: OAuthClientRecord) -> None:
        self.record = record

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> None:
        """None: every authorization request names its redirect URI, matched exactly."""
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The requested scopes this client may have (its default ones, `admin` never among
        them, when none are asked); None, which Authlib answers `invalid_scope`, when nothing is
        left. Which of them the user may have is decided once the user is known."""
        requested = set(scope.split()) if scope else set(DEFAULT_SCOPES)
        allowed = [name for name in self.record.scopes if name in requested]
        return " ".join(allowed) or None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.record.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secret_matches(self.record, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.record.client_type == "public":
            return method == "none"
        return method in CONFIDENTIAL_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    record: AuthorizationCodeRecord

    @property
    def code_challenge(self) -> str | None:
        return self.record.code_challenge

    @property
    def code_challenge_method(self) -> str | None:
        return self.record.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.grant.scope


@dataclass(frozen=True, slots=True)
class RefreshCredential:
    grant: GrantRecord

    def get_scope(self) -> str:
        return self.grant.scope

    def check_client(self, client: Client | None) -> bool:
        return client is None or client.get_client_id() == self.grant.client_id


@dataclass(frozen=True, slots=True)
class AccessCredential:
    claims: AccessClaims

    def check_client(self, client: Client | None) -> bool:
        return client is None or client.get_client_id() == self.claims.client_id


def _compare_s256(code_verifier: str, code_challenge: str) -> bool:
    expected = rfc7636.create_s256_code_challenge(code_verifier)
    return hmac.compare_digest(expected.encode("ascii"), code_challenge.encode("ascii"))


class S256CodeChallenge(rfc7636.CodeChallenge):  # type: ignore[misc]
    """PKCE with S256 only: required of public clients, optional for confidential ones (but
    S256 if they use it); Authlib refuses a verifier sent without a challenge."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": _compare_s256}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        challenge, method = data.get("code_challenge"), data.get("code_challenge_method")
        client: Client = grant.request.client
        if client.record.client_type == "public" and not challenge:
            raise InvalidRequestError("a public client must send a code_challenge (PKCE, S256)")
        if (challenge or method) and method != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(rfc6749.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    server: AuthorizationServer

    def create_authorization_response(self, redirect_uri: str, grant_user: Any) -> Response:
        """The code is for the scopes this user may have: `admin` only for an admin. A user
        left with none (who asked for `admin` alone) gets `invalid_scope`."""
        user: UserRecord = grant_user
        self.request.scope = scope_for_user(self.request.scope, user)
        if not self.request.scope:
            raise InvalidScopeError(
                "this account may not have the requested scope", redirect_uri=redirect_uri
            )
        response: Response = super().create_authorization_response(redirect_uri, grant_user)
        return response

    def save_authorization_code(self, code: str, request: OAuthRequest) -> None:
        user: UserRecord = request.user
        config = self.server.services.config
        ttl_s = min(config.oauth.code_ttl_s, MAX_CODE_TTL_S)
        record = AuthorizationCodeRecord(
            code_hash=token_hash(code),
            grant=GrantRecord(
                grant_id=str(uuid.uuid4()),
                client_id=request.client.get_client_id(),
                user_id=user.user_id,
                scope=request.scope,
            ),
            redirect_uri=request.payload.redirect_uri,
            code_challenge=request.payload.data.get("code_challenge"),
            code_challenge_method=request.payload.data.get("code_challenge_method"),
            expires_at_ms=clock.now_ms() + ttl_s * 1000,
        )
        self.server.call(self.server.services.store.save_authorization_code, record)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        server = self.server
        outcome = server.call(
            server.services.store.redeem_authorization_code,
            token_hash(code),
            client.get_client_id(),
            clock.now_ms(),
            server.revocation_expires_at_ms(),
        )
        if isinstance(outcome, GrantRevoked):
            server.announce_grant_revoked(outcome.grant_id)
            return None
        return None if outcome is None else AuthorizationCode(outcome)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing left to do: the code was consumed when it was presented."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> UserRecord | None:
        return self.server.enabled_user(authorization_code.record.grant.user_id)

    def generate_token(
        self,
        user: UserRecord | None = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        grant = self.request.authorization_code.record.grant
        return self.server.issue_tokens(grant, scope or grant.scope, include_refresh_token)


class RefreshGrant(rfc6749.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: AuthorizationServer

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshCredential | None:
        server = self.server
        outcome = server.call(
            server.services.store.rotate_refresh_token,
            token_hash(refresh_token),
            self.request.client.get_client_id(),
            clock.now_ms(),
            server.revocation_expires_at_ms(),
        )
        if isinstance(outcome, GrantRevoked):
            server.announce_grant_revoked(outcome.grant_id)
            return None
        return None if outcome is None else RefreshCredential(outcome)

    def authenticate_user(self, refresh_token: RefreshCredential) -> UserRecord | None:
        return self.server.enabled_user(refresh_token.grant.user_id)

    def revoke_old_credential(self, refresh_token: RefreshCredential) -> None:
        """Nothing left to do: the token was rotated when it was presented."""

    def generate_token(
        self,
        user: UserRecord | None = None,
        scope: str | None = None,
        grant_type: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        grant = self.request.refresh_token.grant
        # An admin who is no longer one keeps the rest of the grant.
        assert user is not None, "authenticate_user found the grant's user"
        narrowed = scope_for_user(scope or grant.scope, user)
        if not narrowed:
            raise InvalidScopeError("this account may no longer have the granted scope")
        return self.server.issue_tokens(grant, narrowed, include_refresh_token)


class TokenRevocation(rfc7009.RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009. A client that sends credentials must authenticate, and may revoke only its own
    tokens; a request without any client credentials is taken on the token alone (holding a
    token is enough to use it, so it is enough to give it up)."""

    CLIENT_AUTH_METHODS = TOKEN_AUTH_METHODS
    server: AuthorizationServer

    def authenticate_endpoint_client(self, request: OAuthRequest) -> Client | None:
        if "Authorization" not in request.headers and not request.payload.client_id:
            request.client = None
            return None
        client: Client = super().authenticate_endpoint_client(request)
        return client

    def check_params(self, request: OAuthRequest, client: Client | None) -> None:
        # RFC 7009 §2.1: an invalid token type hint is ignored (Authlib answers an error, 401).
        if "token" not in request.form:
            raise InvalidRequestError()

    def query_token(
        self, token_string: str, token_type_hint: str | None
    ) -> AccessCredential | RefreshCredential | None:
        server = self.server
        if token_string.count(".") == 2:
            try:
                claims = verify_token(
                    server.services.keyring, token_string, config=server.services.config
                )
            except InvalidToken:
                return None
            return AccessCredential(claims)
        grant = server.call(server.services.store.find_refresh_token, token_hash(token_string))
        return None if grant is None else RefreshCredential(grant)

    def revoke_token(
        self, token: AccessCredential | RefreshCredential, request: OAuthRequest
    ) -> None:
        if isinstance(token, AccessCredential):
            revoked = TokensRevoked((), (token.claims.jti,), self.server.revocation_expires_at_ms())
        else:
            revoked = TokensRevoked(
                (token.grant.grant_id,), (), self.server.revocation_expires_at_ms()
            )
        self.server.call(self.server.revoke, revoked)

    def create_endpoint_response(self, request: OAuthRequest) -> Response:
        status, _body, headers = super().create_endpoint_response(request)
        return status, {"revoked": True}, headers


class AuthorizationServer(rfc6749.AuthorizationServer):  # type: ignore[misc]
    """One per application. `revoke` and `announce` (`http/revocation.py`) run on the trio side
    and deny-list and spread revocations."""

    def __init__(
        self,
        services: Services,
        *,
        revoke: Callable[[TokensRevoked], Awaitable[None]],
        announce: Callable[[TokensRevoked], Awaitable[None]],
    ) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.services = services
        self.revoke = revoke
        self.announce = announce
        self.register_grant(CodeGrant, [S256CodeChallenge(required=True)])
        self.register_grant(RefreshGrant)
        self.register_endpoint(TokenRevocation)

    # Called from the worker thread an endpoint runs in.

    @staticmethod
    def call(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args)

    def query_client(self, client_id: str) -> Client | None:
        if client_id == WEB_CLIENT_ID:
            return Client(web_client(self.services.public_origin))
        record = self.call(self.services.store.get_client, client_id)
        return None if record is None else Client(record)

    def enabled_user(self, user_id: int) -> UserRecord | None:
        user: UserRecord | None = self.call(self.services.store.get_user, user_id)
        return user if user is not None and not user.disabled else None

    def revocation_expires_at_ms(self) -> int:
        auth = self.services.config.auth
        return (
            clock.now_ms() + (auth.access_token_ttl_s + auth.leeway_s + REVOCATION_MARGIN_S) * 1000
        )

    def announce_grant_revoked(self, grant_id: str) -> None:
        self.call(self.announce, TokensRevoked((grant_id,), (), self.revocation_expires_at_ms()))

    def issue_tokens(
        self, grant: GrantRecord, scope: str, include_refresh_token: bool
    ) -> dict[str, Any]:
        config = self.services.config
        access_token, _claims = issue_access_token(
            self.services.keyring,
            config=config,
            user_id=grant.user_id,
            client_id=grant.client_id,
            scope=scope,
            grant_id=grant.grant_id,
        )
        token: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": config.auth.access_token_ttl_s,
            "scope": scope,
        }
        if include_refresh_token:
            token["refresh_token"] = secrets.token_urlsafe(32)
        return token

    def save_token(self, token: dict[str, Any], request: OAuthRequest) -> None:
        refresh_token = token.get("refresh_token")
        if refresh_token is None:
            return
        if request.authorization_code is not None:
            grant = request.authorization_code.record.grant
        else:
            grant = request.refresh_token.grant
        now = clock.now_ms()
        stored = self.call(
            self.services.store.add_refresh_token,
            grant.grant_id,
            token_hash(refresh_token),
            now,
            now + self.services.config.oauth.refresh_token_ttl_s * 1000,
        )
        if not stored:
            # The grant was revoked while this request ran (a concurrent reuse of its code):
            # the access token is deny-listed with it, and this refresh token must not exist.
            del token["refresh_token"]

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Authlib's framework signals: nothing here listens to them."""

    def create_oauth2_request(self, request: OAuthRequest) -> OAuthRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        return status, body, list(headers)

    # The endpoints, each run whole in a worker thread.

    def authorize(self, request: OAuthRequest, user: UserRecord | None) -> Response | None:
        """Validate an authorization request: None if it is valid and `user` is None (show the
        login form); else the redirect with a code for `user`, or the error (a redirect to the
        client when its redirect URI is known to be the client's, else an error to show)."""
        try:
            grant = self.get_consent_grant(request)
        except OAuth2Error as error:
            status, body, headers = error()
            return status, body, list(headers)
        if user is None:
            return None
        response: Response = self.create_authorization_response(
            request, grant_user=user, grant=grant
        )
        return response

    def deny(self, request: OAuthRequest) -> Response:
        """The resource owner said no: the redirect with `error=access_denied` and the `state`
        (RFC 6749 §4.1.2.1), or, for a request that is not valid, its error."""
        try:
            grant = self.get_consent_grant(request)
        except OAuth2Error as error:
            status, body, headers = error()
            return status, body, list(headers)
        response: Response = self.create_authorization_response(
            request, grant_user=None, grant=grant
        )
        return response

    def token(self, request: OAuthRequest) -> Response:
        response: Response = self.create_token_response(request)
        return response

    def revocation(self, request: OAuthRequest) -> Response:
        response: Response = self.create_endpoint_response("revocation", request)
        return response
