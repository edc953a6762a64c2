DROP TRIGGER account_changes ON "users";
