DROP TRIGGER account_changes ON "users";
DROP FUNCTION account_changes_notify();
