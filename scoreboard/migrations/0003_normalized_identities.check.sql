-- Usernames and emails are now unique without regard to case: keep one account of each name
-- listed and give the others new usernames or emails (in psql, say `UPDATE users SET username =
-- 'alice_2' WHERE id = 7;`, and tell their owners); a name outside ASCII (only ever stored by
-- hand) needs an ASCII one. Then run `scoreboard migrate` again. See docs/accounts.md.
SELECT format('username %s is shared by: %s', lower(username COLLATE "C"),
              string_agg(format('%s (id %s)', username, id), ', ' ORDER BY id))
FROM users GROUP BY lower(username COLLATE "C") HAVING count(*) > 1
UNION ALL
SELECT format('email %s is shared by: %s', lower(email COLLATE "C"),
              string_agg(format('%s (id %s, %s)', email, id, username), ', ' ORDER BY id))
FROM users GROUP BY lower(email COLLATE "C") HAVING count(*) > 1
UNION ALL
SELECT format('account id %s (%s, %s) has characters outside ASCII', id, username, email)
FROM users WHERE username !~ '^[ -~]*$' OR email !~ '^[ -~]*$'
ORDER BY 1;
