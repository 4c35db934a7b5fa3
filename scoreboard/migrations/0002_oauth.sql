-- The OAuth authorization server (design §5, §7): clients, authorization codes, grants with their
-- refresh-token families, and the access-token deny-list. Codes and refresh tokens are stored as
-- the SHA-256 of the token, never the token itself.

CREATE TABLE oauth_clients (
    client_id     text        PRIMARY KEY,
    client_type   text        NOT NULL CHECK (client_type IN ('public', 'confidential')),
    secret_hash   text,
    redirect_uris text[]      NOT NULL,
    scopes        text[]      NOT NULL,
    name          text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT oauth_clients_secret_iff_confidential
        CHECK ((client_type = 'confidential') = (secret_hash IS NOT NULL))
);

-- One row per authorization (a code and the refresh-token family that grows from it). Its id is
-- the `grant_id` claim of the access tokens issued under it. No foreign key to the client: a
-- removed client's grants stay, revoked, for the audit trail.
CREATE TABLE oauth_grants (
    grant_id   text        PRIMARY KEY,
    client_id  text        NOT NULL,
    user_id    bigint      NOT NULL REFERENCES users (id),
    scope      text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

CREATE INDEX oauth_grants_user_idx ON oauth_grants (user_id);
CREATE INDEX oauth_grants_client_idx ON oauth_grants (client_id);

CREATE TABLE oauth_codes (
    code_hash             text        PRIMARY KEY,
    grant_id              text        NOT NULL REFERENCES oauth_grants (grant_id),
    redirect_uri          text        NOT NULL,
    code_challenge        text,
    code_challenge_method text,
    expires_at            timestamptz NOT NULL,
    consumed_at           timestamptz
);

-- A family's tokens: the newest has rotated_at NULL; presenting a rotated one revokes the grant.
CREATE TABLE oauth_refresh_tokens (
    token_hash text        PRIMARY KEY,
    grant_id   text        NOT NULL REFERENCES oauth_grants (grant_id),
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz
);

CREATE INDEX oauth_refresh_tokens_grant_idx ON oauth_refresh_tokens (grant_id);

-- The deny-list every API process keeps in memory: revoked grants and access-token jtis, each
-- until the last access token it could match has expired.
CREATE TABLE oauth_revocations (
    kind       text        NOT NULL CHECK (kind IN ('grant', 'jti')),
    value      text        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE INDEX oauth_revocations_expires_idx ON oauth_revocations (expires_at);
