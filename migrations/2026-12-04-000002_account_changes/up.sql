-- Each replica also caches what the reads that show an account return
-- (GetUser, GetCurrentUser: the row joined with its roles). Those show
-- columns a caller is not built from (names, email, "updatedAt",
-- "lastLogin", which every login touches), so any change of a `users` row
-- is announced too, as `account:<id>` on a channel of its own,
-- `account_changes`: it evicts that account's view and leaves its callers
-- cached (a login must not empty the caller cache). Replicas LISTEN to both
-- channels on one connection, so they hear both in commit order. Replicas
-- built before this migration do not listen to `account_changes`, so
-- during a rolling upgrade they never see these (they cache no accounts):
-- on `caller_changes` they would take an unknown payload for `all` and
-- empty their whole caller cache on every login.
-- Changes of activity, password, existence and roles already announce
-- `user:<id>` on `caller_changes`, and a role's name or permissions `all`,
-- which evict views as well. Replicas check on (re)connecting that this
-- trigger exists and is enabled, and cache no account otherwise.
-- (src/auth/callers/ describes the protocol.)

CREATE FUNCTION account_changes_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('account_changes', 'account:' || NEW.id);
    IF OLD.id IS DISTINCT FROM NEW.id THEN
        PERFORM pg_notify('account_changes', 'account:' || OLD.id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER account_changes AFTER UPDATE ON "users"
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*)
    EXECUTE FUNCTION account_changes_notify();
