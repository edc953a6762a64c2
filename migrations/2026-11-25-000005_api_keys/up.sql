-- API keys: credentials for machines (workers, scripts). Only a SHA-256 of
-- each key's secret is kept; the secret is shown once, when it is created.
-- A key's permissions are its scope intersected with its owner's roles at
-- the time of each call.
CREATE TABLE "api_keys" (
    "id" UUID NOT NULL,
    "userId" UUID NOT NULL,
    "name" VARCHAR NOT NULL,
    "secretHash" BYTEA NOT NULL,
    "permissions" JSONB NOT NULL DEFAULT '[]',
    "expiresAt" TIMESTAMP(3),
    "revokedAt" TIMESTAMP(3),
    "createdBy" UUID,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "api_keys_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "api_keys_userId_fkey" FOREIGN KEY ("userId")
        REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX "api_keys_userId_createdAt_idx" ON "api_keys"("userId", "createdAt" DESC, "id" DESC);
