DROP INDEX IF EXISTS "users_email_lower_key";
DROP INDEX IF EXISTS "user_roles_roleId_idx";
DROP INDEX IF EXISTS "sessions_userId_idx";
DROP TABLE IF EXISTS "login_throttles";
DROP TABLE IF EXISTS "session_spent_tokens";
