-- Each replica also caches what the reads that show an account return
-- (GetUser, GetCurrentUser: the row joined with its roles). Those show
-- columns a caller is not built from (names, email, "updatedAt",
-- "lastLogin", which every login touches), so any change of a `users` row
-- is announced too, as `account:<id>`: it evicts that account's view and
-- leaves its callers cached (a login must not empty the caller cache).
-- Changes of activity, password, existence and roles already announce
-- `user:<id>`, and a role's name or permissions `all`, which evict views
-- as well. (src/auth/callers/ describes the protocol.)

CREATE TRIGGER account_changes AFTER UPDATE ON "users"
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION caller_changes_notify('account');

-- During a rolling upgrade, replicas built before this migration take
-- `account:<id>` for an unknown payload and empty their whole cache:
-- correct, only slower, until they are replaced.
