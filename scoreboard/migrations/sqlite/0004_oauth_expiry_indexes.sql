-- Embedded mode: the indexes of ../0004_oauth_expiry_indexes.sql.

CREATE INDEX oauth_codes_expires_idx ON oauth_codes (expires_at_ms);
CREATE INDEX oauth_codes_grant_idx ON oauth_codes (grant_id);
CREATE INDEX oauth_refresh_tokens_expires_idx ON oauth_refresh_tokens (expires_at_ms);
