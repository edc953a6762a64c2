-- Every write that can change what a caller may do is announced on the
-- `caller_changes` channel, by the database itself: whatever wrote it (the
-- service, a script, an operator at psql), each replica's cache of callers
-- hears it, in commit order, and drops what it changed. Payloads:
--   session:<id>  a session was revoked, rotated, expired early or deleted
--   key:<id>      an API key was revoked, changed or deleted
--   user:<id>     an account's activity, password, existence or roles changed
--   all           a role's permissions changed (or a table was truncated)
-- Inserts of sessions, keys and accounts announce nothing: nothing can have
-- cached what did not exist. (src/auth/callers/ describes the protocol.)

CREATE FUNCTION caller_changes_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_id uuid;
    kind text := TG_ARGV[0];
BEGIN
    IF TG_LEVEL = 'STATEMENT' OR kind = 'all' THEN
        PERFORM pg_notify('caller_changes', 'all');
        RETURN NULL;
    END IF;
    IF TG_TABLE_NAME = 'user_roles' THEN
        IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('caller_changes', 'user:' || OLD."userId");
        END IF;
        IF TG_OP <> 'DELETE' THEN
            PERFORM pg_notify('caller_changes', 'user:' || NEW."userId");
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        row_id := OLD.id;
    ELSE
        row_id := NEW.id;
    END IF;
    PERFORM pg_notify('caller_changes', kind || ':' || row_id);
    IF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
        PERFORM pg_notify('caller_changes', kind || ':' || OLD.id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER caller_changes AFTER UPDATE OR DELETE ON "sessions"
    FOR EACH ROW EXECUTE FUNCTION caller_changes_notify('session');
CREATE TRIGGER caller_changes AFTER UPDATE OR DELETE ON "api_keys"
    FOR EACH ROW EXECUTE FUNCTION caller_changes_notify('key');
-- Logins touch "lastLogin" on every success: only the columns a caller is
-- built from (and the password, whose change ends sessions) announce.
CREATE TRIGGER caller_changes AFTER UPDATE OF id, "isActive", password ON "users"
    FOR EACH ROW EXECUTE FUNCTION caller_changes_notify('user');
CREATE TRIGGER caller_changes_delete AFTER DELETE ON "users"
    FOR EACH ROW EXECUTE FUNCTION caller_changes_notify('user');
CREATE TRIGGER caller_changes AFTER INSERT OR UPDATE OR DELETE ON "user_roles"
    FOR EACH ROW EXECUTE FUNCTION caller_changes_notify('user');
CREATE TRIGGER caller_changes AFTER UPDATE OR DELETE ON "roles"
    FOR EACH ROW EXECUTE FUNCTION caller_changes_notify('all');
CREATE TRIGGER caller_changes_truncate AFTER TRUNCATE ON "sessions"
    FOR EACH STATEMENT EXECUTE FUNCTION caller_changes_notify('all');
CREATE TRIGGER caller_changes_truncate AFTER TRUNCATE ON "api_keys"
    FOR EACH STATEMENT EXECUTE FUNCTION caller_changes_notify('all');
CREATE TRIGGER caller_changes_truncate AFTER TRUNCATE ON "users"
    FOR EACH STATEMENT EXECUTE FUNCTION caller_changes_notify('all');
CREATE TRIGGER caller_changes_truncate AFTER TRUNCATE ON "user_roles"
    FOR EACH STATEMENT EXECUTE FUNCTION caller_changes_notify('all');
CREATE TRIGGER caller_changes_truncate AFTER TRUNCATE ON "roles"
    FOR EACH STATEMENT EXECUTE FUNCTION caller_changes_notify('all');
