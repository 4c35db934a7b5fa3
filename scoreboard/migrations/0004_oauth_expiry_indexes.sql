-- The janitor deletes expired codes and refresh tokens, oldest first, in small batches, and then
-- the grants left with neither: these indexes keep each batch from scanning its table.

CREATE INDEX oauth_codes_expires_idx ON oauth_codes (expires_at);
CREATE INDEX oauth_codes_grant_idx ON oauth_codes (grant_id);
CREATE INDEX oauth_refresh_tokens_expires_idx ON oauth_refresh_tokens (expires_at);
