-- Identity hardening. Only additions: the seed schema stays as it is.

-- Spent refresh tokens (hashes), kept so that presenting one again is
-- recognised as reuse and the whole session is revoked.
CREATE TABLE "session_spent_tokens" (
    "tokenHash" VARCHAR NOT NULL,
    "sessionId" UUID NOT NULL,
    "spentAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "session_spent_tokens_pkey" PRIMARY KEY ("tokenHash"),
    CONSTRAINT "session_spent_tokens_sessionId_fkey" FOREIGN KEY ("sessionId")
        REFERENCES "sessions"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX "session_spent_tokens_sessionId_idx" ON "session_spent_tokens"("sessionId");

-- Failed-login counters per account and per client IP. One row per key,
-- updated under a row lock: attempts whose password check is still running
-- ("inFlight") count against the limit, so concurrent guesses cannot slip
-- past it.
CREATE TABLE "login_throttles" (
    "key" VARCHAR NOT NULL,
    "failures" INTEGER NOT NULL DEFAULT 0,
    "windowStartedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "lockedUntil" TIMESTAMP(3),
    "inFlight" INTEGER NOT NULL DEFAULT 0,
    "inFlightSince" TIMESTAMP(3),
    CONSTRAINT "login_throttles_pkey" PRIMARY KEY ("key")
);

-- Sessions are looked up by user for listing and mass revocation.
CREATE INDEX "sessions_userId_idx" ON "sessions"("userId");
-- Role assignments are read by role when counting admins.
CREATE INDEX "user_roles_roleId_idx" ON "user_roles"("roleId");
-- Emails are unique regardless of case, as login compares them.
CREATE UNIQUE INDEX "users_email_lower_key" ON "users"(lower("email"));
