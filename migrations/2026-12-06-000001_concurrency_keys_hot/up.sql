-- A key's row is written twice per keyed job (its RUNNING count, up at
-- the claim and down at the settle): a thousand rows written tens of
-- thousands of times a second in a keyed drain. Each write that finds no
-- room on the row's page is not a HOT update, and adds an entry to every
-- index of the table.
-- - `servedAt` (and its index) has not been read or written since claims
--   walk the keys from a cursor (BENCHMARKS.md, issue 15, run 9): dropped.
-- - Pages are filled to half, so that a row's new versions find room
--   beside it. This applies to pages written from now on: the table is
--   small and its rows come and go with their keys, and a quiet moment's
--   `VACUUM FULL concurrency_keys` rewrites the rest.
--   In the job bench's keyed drain: 95.7 % of the key rows' updates HOT
--   against 94.3 % without, and a third fewer heap buffers read (1.33 M
--   against 1.87 M); the drain's rate did not move beyond its noise
--   (BENCHMARKS.md, issue 15, run 14).
-- The locks are short (the table holds one row per open key) and waited
-- for at most 5 s at a time, so that claims never queue behind this
-- migration for longer: one that cannot get them is rolled back and tried
-- again (`db::migrations`, LOCK_TRIES).
SET LOCAL lock_timeout = '5s';
DROP INDEX "concurrency_keys_servedAt_idx";
ALTER TABLE "concurrency_keys" DROP COLUMN "servedAt";
ALTER TABLE "concurrency_keys" SET (fillfactor = 50);
