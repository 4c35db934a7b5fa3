-- Embedded mode: the OAuth tables of ../0002_oauth.sql in SQLite (times in epoch ms, lists as
-- JSON text).

CREATE TABLE oauth_clients (
    client_id     TEXT    PRIMARY KEY,
    client_type   TEXT    NOT NULL CHECK (client_type IN ('public', 'confidential')),
    secret_hash   TEXT,
    redirect_uris TEXT    NOT NULL,
    scopes        TEXT    NOT NULL,
    name          TEXT    NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL,
    CONSTRAINT oauth_clients_secret_iff_confidential
        CHECK ((client_type = 'confidential') = (secret_hash IS NOT NULL))
);

CREATE TABLE oauth_grants (
    grant_id      TEXT    PRIMARY KEY,
    client_id     TEXT    NOT NULL,
    user_id       INTEGER NOT NULL REFERENCES users (id),
    scope         TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);

CREATE INDEX oauth_grants_user_idx ON oauth_grants (user_id);
CREATE INDEX oauth_grants_client_idx ON oauth_grants (client_id);

CREATE TABLE oauth_codes (
    code_hash             TEXT    PRIMARY KEY,
    grant_id              TEXT    NOT NULL REFERENCES oauth_grants (grant_id),
    redirect_uri          TEXT    NOT NULL,
    code_challenge        TEXT,
    code_challenge_method TEXT,
    expires_at_ms         INTEGER NOT NULL,
    consumed_at_ms        INTEGER
);

CREATE TABLE oauth_refresh_tokens (
    token_hash    TEXT    PRIMARY KEY,
    grant_id      TEXT    NOT NULL REFERENCES oauth_grants (grant_id),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    rotated_at_ms INTEGER
);

CREATE INDEX oauth_refresh_tokens_grant_idx ON oauth_refresh_tokens (grant_id);

CREATE TABLE oauth_revocations (
    kind          TEXT    NOT NULL CHECK (kind IN ('grant', 'jti')),
    value         TEXT    NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE INDEX oauth_revocations_expires_idx ON oauth_revocations (expires_at_ms);
