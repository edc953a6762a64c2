//! Claiming runnable jobs for Work streams: the plain claim, the claim of
//! every lane (concurrency keys and rate-limit buckets too, which it locks
//! itself), and what a claim whose answer was lost leased.

use diesel::{
    pg::Pg,
    prelude::*,
    query_builder::{BoxedSqlQuery, SqlQuery},
    sql_types::{Array, BigInt, Bool, Integer, Interval, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{CHANNEL, JOB_COLUMNS, JobRow, LeaseRef, counted_by_statement, interval};
use crate::store::kept::Kept;

/// Which pending jobs a group of workers takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClaimFilter {
    /// Job names; empty means any.
    pub names: Vec<String>,
    /// Module names; empty means any.
    pub modules: Vec<String>,
    /// Only jobs of no module: the workers' caller does not hold
    /// `modules:execute`, so a module's jobs (its hooks included) are not
    /// theirs to run, whatever the names say.
    pub plain_only: bool,
}

/// A Work stream a claim may lease jobs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The stream.
    pub stream: Uuid,
    /// The worker's name, recorded on the job.
    pub worker_id: String,
}

/// Who the jobs of one [`claim`] go to: the n-th job claimed (in dispatch
/// order) goes to `streams[owners[n]]`. Its size is what the claim leases
/// (at most `owners.len()` jobs), never what the streams advertise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimPlan {
    /// The streams offered jobs, each once.
    pub streams: Vec<Slot>,
    /// For each job to claim, the index in `streams` of its stream.
    pub owners: Vec<i32>,
}

/// Session settings of the connection that claims: they pin the claim's
/// plan to an ordered scan of the dispatch index. A queue's statistics are
/// stale by nature (a hundred thousand rows enqueued a second ago look like
/// fifty to the planner), and the plan the planner then picks — sort every
/// runnable row to take the first few hundred — costs tens of milliseconds
/// per claim where the index scan costs one or two. (The plan's estimated
/// cost then looks enormous, which would make PostgreSQL compile it with
/// JIT, for hundreds of milliseconds: JIT is off too.) Only the dedicated
/// claiming connection runs with them.
///
/// The statement timeout is below the dispatcher's own wait for a claim
/// (10 s): a claim the dispatcher gave up on is cancelled by the server
/// rather than committing later, unseen, with leases no stream knows of.
///
/// The claim statements are kept prepared ([`Kept`]), each planned once
/// for any values (`plan_cache_mode`): its plan is pinned by the settings
/// above, and a plan made again at every call cost ~4 ms of a ~10 ms claim.
///
/// The claimer also turns `STATEMENT_COUNTS_KEYS` on for its session
/// ([`super::count_keys_by_statement`]): [`claim`] counts the jobs it
/// starts per key itself, in one grouped write of the key rows it holds
/// locked, where the trigger wrote each key once per job. Only claims run
/// on this connection.
pub const CLAIM_SESSION_SETTINGS: &str = "SET enable_sort = off; SET enable_bitmapscan = off; \
     SET enable_seqscan = off; SET jit = off; SET statement_timeout = '8s'; \
     SET plan_cache_mode = force_generic_plan";

/// The keys a claim locks (CTE `locked_keys`): up to `$10` concurrency
/// keys that look worth claiming for, in key order from just after `$12`
/// (the last key the previous claim served) round to it again — a round
/// robin that costs no write: the keys' order is their primary key, so a
/// served key's row changes only in its count (`running`, not indexed:
/// a HOT update, no new index entry). Keys another claim (or a create, or a
/// settle of one of their jobs) holds are skipped. Worth claiming for:
/// fewer RUNNING jobs than the maximum, and a runnable job this claim's
/// filter takes (its names `$1`, modules `$2`, or jobs of no module: a key
/// whose jobs are all another group's is not locked, so it cannot fill
/// the `$10` keys examined and keep this group's keys behind it out of
/// reach while the cursor stays put; only the conditions the filter needs
/// are written, see [`filter_conditions`]). A claim never
/// deletes a key's row, even one it finds without open jobs: its snapshot
/// predates its lock, and a job of that key created in between would be
/// left without a row, unclaimable. Emptied keys are deleted by the
/// dispatcher's tending (`store::jobs::keys`), under a fresh snapshot taken
/// after the lock.
///
/// (Keys used to be ordered by a `servedAt` column that every claim
/// rewrote: an indexed column, so each keyed job left a dead entry in two
/// indexes of the keys' table, which the next walks stepped over — 5–25 ms
/// per claim mid-drain, BENCHMARKS.md, run 8.)
///
/// A key's row counts its RUNNING jobs (`running`, kept by the statements
/// that start and end them, or by triggers on `jobs`, in the transaction
/// that changes a keyed job's status: see `store::jobs::keys`), so a
/// saturated key is passed over on its row alone, without probing its
/// jobs; only keys with room cost an index probe: the key's first runnable
/// job (`first_id`: the same conditions and order as the key's lane in
/// [`claim`]), which is all a key of one free slot then needs — its job is
/// found by the walk that locks it, not looked up again. What the probe
/// reads is only a hint (the statement's snapshot may be a moment old);
/// `free` is not: every change of a key's count holds the key's row until
/// it commits, and `FOR UPDATE` returns the row as the last of them left
/// it (re-read after the lock), so `free` is exact for as long as the
/// claim holds the lock.
///
/// The probe is a `LATERAL … LIMIT 1`, an ordered scan of the key's
/// entries in `jobs_dispatch_key_idx` that stops at its first runnable job.
/// (It was an `EXISTS`, which PostgreSQL may hash instead — an `EXISTS`
/// under an `OR` becomes a hashed `ANY` reading every pending job of every
/// key, 90 ms mid-drain over 1,000 keys — and which the key's lane then
/// probed again: 2 ms of a 10 ms claim of 170 keys.) Which is why the lock,
/// the count and the claim may share one statement: the count is not read
/// from the jobs under the statement's snapshot (which could predate
/// another replica's claim of the same key), and a job another claim leased
/// after that snapshot is re-read when `keyed` locks it, and passed over.
fn lock_keys(filter: &ClaimFilter) -> String {
    let runnable = runnable(filter);
    let names = names_condition(filter);
    let arm = |side: &str, lap: u8| {
        format!(
            r#"SELECT * FROM (
                   SELECT k.key, k.max - k.running AS free, {lap} AS lap,
                          first.id AS first_id, first.priority AS first_priority,
                          first."scheduledAt" AS first_scheduled_at
                   FROM concurrency_keys k, LATERAL (
                       SELECT j.id, j.priority, j."scheduledAt"
                       FROM jobs j
                       WHERE j."concurrencyKey" = k.key AND j."rateLimit" IS NULL
                         AND {runnable}{names}
                       ORDER BY j.priority DESC, j."scheduledAt", j.id
                       LIMIT 1) first
                   WHERE k.key {side} $12 AND k.running < k.max
                   ORDER BY k.key
                   LIMIT $10
                   FOR UPDATE OF k SKIP LOCKED) a{lap}"#
        )
    };
    format!(
        "SELECT * FROM ({} UNION ALL {}) k LIMIT $10",
        arm(">", 0),
        arm("<=", 1)
    )
}

/// The conditions a claim's filter puts on its jobs' modules (`$2` the
/// modules; only jobs of no module when the filter says `plain_only`):
/// only those the filter needs, written out. A claim statement is kept
/// prepared, one text per shape of filter, and planned once for any values:
/// a condition such as `cardinality($2) = 0 OR …` would stay in that plan,
/// evaluated on every job the claim reads, and keep the planner from
/// choosing an index for what the filter does ask.
fn filter_conditions(filter: &ClaimFilter) -> String {
    let mut conditions = String::new();
    if !filter.modules.is_empty() {
        conditions.push_str(r#" AND j."moduleName" = ANY($2)"#);
    }
    if filter.plain_only {
        conditions.push_str(r#" AND j."moduleName" IS NULL"#);
    }
    conditions
}

/// The condition a claim filtered by job names (`$1`) puts on its jobs,
/// if it is.
fn names_condition(filter: &ClaimFilter) -> &'static str {
    if filter.names.is_empty() {
        ""
    } else {
        " AND j.name = ANY($1)"
    }
}

/// What makes a job claimable now (`j`), whatever its lane, for a claim
/// with this filter's modules (see [`filter_conditions`]).
fn runnable(filter: &ClaimFilter) -> String {
    let takes = filter_conditions(filter);
    format!(
        r#"j.status = 'PENDING' AND NOT j.held AND NOT j.waiting
                 AND j."scheduledAt" <= LOCALTIMESTAMP{takes}
                 AND (j."moduleName" IS NULL OR EXISTS (
                       SELECT 1 FROM modules m
                       WHERE m.name = j."moduleName"
                         AND (m.status = 'ENABLED'
                              OR (j.hook = 'install' AND m.status = 'INSTALLING')
                              OR (j.hook = 'update' AND m.status = 'UPDATING')
                              OR (j.hook = 'remove' AND m.status = 'REMOVING'))))"#
    )
}

/// The keyless lane of a claim (CTE `keyless`): jobs of no key and no
/// bucket, from the dispatch index, or for a claim filtered by job names
/// (`$1`) from the names index, one scan per name. `$3` the batch.
fn keyless_lane(filter: &ClaimFilter) -> String {
    let runnable = runnable(filter);
    if filter.names.is_empty() {
        format!(
            r#"keyless AS (
               SELECT j.id, j.priority, j."scheduledAt"
               FROM jobs j
               WHERE j."concurrencyKey" IS NULL AND j."rateLimit" IS NULL AND {runnable}
               ORDER BY j.priority DESC, j."scheduledAt", j.id
               LIMIT $3
               FOR UPDATE OF j SKIP LOCKED
           )"#
        )
    } else {
        format!(
            r#"keyless AS (
               SELECT c.* FROM unnest($1::text[]) AS n(name), LATERAL (
                   SELECT j.id, j.priority, j."scheduledAt"
                   FROM jobs j
                   WHERE j.name = n.name AND j."concurrencyKey" IS NULL
                     AND j."rateLimit" IS NULL AND {runnable}
                   ORDER BY j.priority DESC, j."scheduledAt", j.id
                   LIMIT $3
                   FOR UPDATE OF j SKIP LOCKED) c
           )"#
        )
    }
}

/// The lease itself (CTE `claimed`): the n-th job of `numbered` goes to
/// the stream `$8[n]` names (`$4` streams, `$5` their workers), for `$6`,
/// tagged with the claim id `tag` (a parameter). Jobs past the end of `$8`
/// are not leased. The stream and worker are read from the arrays by
/// subscript, not joined: a join of `numbered` with the slots was planned
/// as a nested loop that re-ran `numbered` (its sort and window) once per
/// job, ~17 ms for 128 jobs.
fn lease_numbered(tag: &str) -> String {
    format!(
        r#"claimed AS (
               UPDATE jobs
               SET status = 'RUNNING', attempts = jobs.attempts + 1,
                   "startedAt" = LOCALTIMESTAMP, "leaseExpiresAt" = LOCALTIMESTAMP + $6,
                   "leasedBy" = ($4::uuid[])[($8::int[])[numbered.slot] + 1],
                   "workerId" = ($5::text[])[($8::int[])[numbered.slot] + 1],
                   "claimId" = {tag}, "updatedAt" = LOCALTIMESTAMP
               FROM numbered
               WHERE jobs.id = numbered.id AND numbered.slot <= cardinality($8::int[])
               RETURNING {JOB_COLUMNS}
           )"#
    )
}

/// The end of a claim: the claimed jobs announced as changed (`c`
/// notifications of at most 200 ids, on channel `$7`), then returned.
const ANNOUNCED: &str = r#"announced AS (
               SELECT pg_notify($7, 'c ' || string_agg(id::text, ','))
               FROM (SELECT id, (row_number() OVER () - 1) / 200 AS chunk FROM claimed) c
               GROUP BY chunk
           )
           SELECT claimed.* FROM claimed WHERE (SELECT count(*) FROM announced) >= 0"#;

/// The parameters every claim statement shares, `$1`–`$9`: the filter's
/// names (`$1`) and modules (`$2`), the batch (`$3`),
/// the streams (`$4`), their workers (`$5`), the lease (`$6`), the
/// notification channel (`$7`) and the owner of each job (`$8`). `$9`
/// (`plain_only`) is bound but no statement reads it any more (the text
/// says it, see [`filter_conditions`]): kept so the later parameters keep
/// their numbers.
fn lane_binds<'a>(
    query: BoxedSqlQuery<'a, Pg, SqlQuery>,
    filter: &'a ClaimFilter,
    plan: &'a ClaimPlan,
    lease: std::time::Duration,
) -> BoxedSqlQuery<'a, Pg, SqlQuery> {
    query
        .bind::<Array<Text>, _>(&filter.names)
        .bind::<Array<Text>, _>(&filter.modules)
        .bind::<BigInt, _>(plan.owners.len() as i64)
        .bind::<Array<SqlUuid>, _>(plan.streams.iter().map(|s| s.stream).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(
            plan.streams
                .iter()
                .map(|s| s.worker_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind::<Interval, _>(interval(lease))
        .bind::<Text, _>(CHANNEL)
        .bind::<Array<Integer>, _>(&plan.owners)
        .bind::<Bool, _>(filter.plain_only)
}

/// [`claim`] for jobs of no key and no bucket only: the claim as it is
/// while no key has room and no bucket holds a token (see
/// `domain::jobs::leases::LimitsPhase`). One statement, atomic on its own,
/// and short: the full claim's lanes cost work (and, before the claims
/// were kept prepared, milliseconds of planning) that a drain of plain jobs
/// would pay per batch.
pub async fn claim_plain(
    conn: &mut AsyncPgConnection,
    filter: &ClaimFilter,
    plan: &ClaimPlan,
    lease: std::time::Duration,
    claim: Uuid,
) -> QueryResult<Vec<JobRow>> {
    if plan.owners.is_empty() {
        return Ok(Vec::new());
    }
    let keyless = keyless_lane(filter);
    let leased = lease_numbered("$10");
    let query = diesel::sql_query(format!(
        r#"WITH {keyless},
           numbered AS (
               SELECT id, row_number() OVER (ORDER BY priority DESC, "scheduledAt", id) AS slot
               FROM keyless
           ),
           {leased},
           {ANNOUNCED}"#
    ))
    .into_boxed();
    Kept(lane_binds(query, filter, plan, lease).bind::<SqlUuid, _>(claim))
        .load(conn)
        .await
}

/// Leases up to `plan.owners.len()` runnable jobs, skipping rows other
/// replicas are claiming right now, and only jobs whose module is ENABLED
/// (or, for lifecycle hook jobs, in the transition the hook carries out).
/// The n-th job goes to the stream `plan.owners[n]` names. Each lease is a
/// new attempt, tagged with `claim` (see [`leases_of_claims`]). It also
/// announces the claimed jobs as changed (`c` notifications of at most 200
/// ids). One statement, atomic on its own: it locks the keys and buckets
/// it claims for itself (up to `examined` of each). Run it on a connection
/// with [`CLAIM_SESSION_SETTINGS`].
///
/// Where the jobs come from, each an ordered index scan that never walks a
/// job it cannot take:
/// - jobs without a key: the dispatch index (priority, then schedule, then
///   id), or for a claim filtered by job names the names index, one scan
///   per name;
/// - jobs with a key, for each key locked (see [`lock_keys`]): as many of
///   the key's jobs as it has free slots (`free`, read under the key's
///   lock), from the key's own index (a key of one free slot: the job its
///   lock's probe found). A saturated key is not locked,
///   however many jobs it holds pending, and does not stand in anyone's way.
///
/// The jobs of a key are read without locks and only the batch's worth is
/// locked: no other claim can be taking them (it would need the key's lock,
/// which this statement holds), so nothing is locked that is not leased.
///
/// The jobs found are dealt in turns, within each priority: the first of
/// each key (and the first keyless one), then the second of each… so a
/// busy key cannot take a batch from the others. Keys are examined from
/// just after `after_key` on, in key order, round to it again: the caller
/// passes the last key the previous claim served (see
/// `dispatch::claimer`), so served keys go to the back
/// of the round robin without a write.
///
/// - jobs with a rate limit, for each bucket locked (up to `examined`
///   holding a whole token and naming a job this claim may take, least
///   recently drawn from first, skipping those another claim holds): as
///   many as it holds whole tokens, computed from the database's clock on
///   the locked row (so
///   from the latest claim's draw: a bucket another claim drained after this
///   statement's snapshot is re-read when locked), from the bucket's own
///   index; the claim takes one token per job leased and records the draw
///   in the same statement.
///
/// Jobs scheduled later are not in these indexes (`waiting`, see
/// [`super::promote_due`]); neither are held ones.
///
/// The slot count cannot drift: the key's `running` is written in the same
/// statement as the status change it counts — here by the claim itself
/// (CTE `counted`, on the key rows `locked_keys` holds), by the settles the
/// same way, by triggers on `jobs` for every other writer — so a lease taken here, settled, lost to the reaper,
/// taken from a stream a replica's kill -9 cut off, or cancelled changes it
/// in the statement that changes the job, whichever writer that is (a bulk
/// cancel, the platform's own backend), and commits or rolls back with it.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    filter: &ClaimFilter,
    plan: &ClaimPlan,
    lease: std::time::Duration,
    examined: i64,
    claim: Uuid,
    after_key: &str,
) -> QueryResult<Vec<JobRow>> {
    if plan.owners.is_empty() {
        return Ok(Vec::new());
    }
    let query = diesel::sql_query(full_claim_sql(filter)).into_boxed();
    Kept(
        lane_binds(query, filter, plan, lease)
            .bind::<BigInt, _>(examined)
            .bind::<SqlUuid, _>(claim)
            .bind::<Text, _>(after_key),
    )
    .load(conn)
    .await
}

/// The check that a job picked from a lane's index is still runnable, made
/// on its row found by id. Written as one `IS TRUE` test so that it cannot
/// be used as an index condition: the plan must reach each picked job
/// through its primary key. When `jobs` was last analysed with nothing
/// pending, `status = 'PENDING'` looks like it matches no row, and a plan
/// that read `jobs_status_idx` for every picked job — re-reading every
/// pending job each time — looked cheapest (`claim_plans::` tests).
const STILL_RUNNABLE: &str = "(j.status = 'PENDING' AND NOT j.held AND NOT j.waiting) IS TRUE";

/// The statement of [`claim`] for a claim with this filter: one text per
/// shape of filter, kept prepared. Public so that its plan can be read
/// (`EXPLAIN EXECUTE` of it prepared, with [`CLAIM_SESSION_SETTINGS`]).
pub fn full_claim_sql(filter: &ClaimFilter) -> String {
    let runnable = runnable(filter);
    let names = names_condition(filter);
    let keyless = keyless_lane(filter);
    let leased = lease_numbered("$11");
    let keys = lock_keys(filter);
    let tokens = crate::store::rate_limits::TOKENS_NOW;
    let counted = counted_by_statement("claimed", "+");
    format!(
        r#"WITH {keyless},
           locked_keys AS (
               {keys}
           ),
           room AS (
               SELECT key, free, first_id, first_priority, first_scheduled_at,
                      row_number() OVER (ORDER BY lap, key) AS turn
               FROM locked_keys
           ),
           keyed_pick AS (
               SELECT first_id AS id, first_priority AS priority,
                      first_scheduled_at AS "scheduledAt", turn, 1::bigint AS rank
               FROM room WHERE free = 1
               UNION ALL
               SELECT c.id, c.priority, c."scheduledAt", room.turn,
                      row_number() OVER (PARTITION BY room.key
                                         ORDER BY c.priority DESC, c."scheduledAt", c.id) AS rank
               FROM room, LATERAL (
                   SELECT j.id, j.priority, j."scheduledAt"
                   FROM jobs j
                   WHERE j."concurrencyKey" = room.key AND j."rateLimit" IS NULL AND {runnable}{names}
                   ORDER BY j.priority DESC, j."scheduledAt", j.id
                   LIMIT LEAST(room.free, $3)) c
               WHERE room.free > 1
           ),
           keyed AS (
               SELECT k.id, k.priority, k."scheduledAt", k.turn, k.rank
               FROM (SELECT * FROM keyed_pick
                     ORDER BY priority DESC, rank, turn, "scheduledAt", id
                     LIMIT $3) k
               JOIN jobs j ON j.id = k.id
               WHERE {STILL_RUNNABLE}
               FOR UPDATE OF j SKIP LOCKED
           ),
           locked_buckets AS (
               SELECT r.name, {tokens} AS available, r."servedAt"
               FROM rate_limits r, LATERAL (
                   SELECT 1 FROM jobs j
                   WHERE j."rateLimit" = r.name AND j."concurrencyKey" IS NULL
                     AND {runnable}{names}
                   ORDER BY j.priority DESC, j."scheduledAt", j.id
                   LIMIT 1) first
               WHERE {tokens} >= 1
               ORDER BY r."servedAt", r.name
               LIMIT $10
               FOR NO KEY UPDATE OF r SKIP LOCKED
           ),
           bucket_room AS (
               SELECT b.name, floor(b.available)::bigint AS free,
                      row_number() OVER (ORDER BY b."servedAt", b.name) AS turn
               FROM locked_buckets b
           ),
           bucket_pick AS (
               SELECT c.id, c.priority, c."scheduledAt", bucket_room.turn,
                      row_number() OVER (PARTITION BY bucket_room.name
                                         ORDER BY c.priority DESC, c."scheduledAt", c.id) AS rank
               FROM bucket_room, LATERAL (
                   SELECT j.id, j.priority, j."scheduledAt"
                   FROM jobs j
                   WHERE j."rateLimit" = bucket_room.name AND j."concurrencyKey" IS NULL
                     AND {runnable}{names}
                   ORDER BY j.priority DESC, j."scheduledAt", j.id
                   LIMIT LEAST(GREATEST(bucket_room.free, 0), $3)) c
               WHERE bucket_room.free > 0
           ),
           bucketed AS (
               SELECT k.id, k.priority, k."scheduledAt", k.turn, k.rank
               FROM (SELECT * FROM bucket_pick
                     ORDER BY priority DESC, rank, turn, "scheduledAt", id
                     LIMIT $3) k
               JOIN jobs j ON j.id = k.id
               WHERE {STILL_RUNNABLE}
               FOR UPDATE OF j SKIP LOCKED
           ),
           candidates AS (
               SELECT id, priority, "scheduledAt", 0::bigint AS turn,
                      row_number() OVER (ORDER BY priority DESC, "scheduledAt", id) AS rank
               FROM keyless
               UNION ALL
               SELECT id, priority, "scheduledAt", turn, rank FROM keyed
               UNION ALL
               SELECT id, priority, "scheduledAt", turn, rank FROM bucketed
           ),
           numbered AS (
               SELECT id, row_number() OVER (ORDER BY priority DESC, rank, turn,
                                                      "scheduledAt", id) AS slot
               FROM candidates
           ),
           {leased},
           {counted},
           drawn AS (
               UPDATE rate_limits r
               SET tokens = b.available - COALESCE(t.n, 0),
                   "refilledAt" = GREATEST(r."refilledAt", LOCALTIMESTAMP),
                   "servedAt" = LOCALTIMESTAMP
               FROM locked_buckets b
               LEFT JOIN (SELECT rate_limit, count(*) AS n FROM claimed GROUP BY rate_limit) t
                 ON t.rate_limit = b.name
               WHERE r.name = b.name
               RETURNING 1
           ),
           {ANNOUNCED}"#
    )
}

/// The leases still standing that the claims `claims` took: after a claim
/// whose answer was lost (its commit may have happened), none of them ever
/// reached a stream. Reads only RUNNING rows (through their partial
/// index), so it costs what runs, not what the table holds.
pub async fn leases_of_claims(
    conn: &mut AsyncPgConnection,
    claims: &[Uuid],
) -> QueryResult<Vec<LeaseRef>> {
    #[derive(QueryableByName)]
    struct Held {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
        #[diesel(sql_type = Integer)]
        attempts: i32,
        #[diesel(sql_type = SqlUuid)]
        stream: Uuid,
    }
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let held: Vec<Held> = diesel::sql_query(
        r#"SELECT id, attempts, "leasedBy" AS stream FROM jobs
           WHERE status = 'RUNNING' AND "leaseExpiresAt" IS NOT NULL
             AND "claimId" = ANY($1) AND "leasedBy" IS NOT NULL"#,
    )
    .bind::<Array<SqlUuid>, _>(claims)
    .load(conn)
    .await?;
    Ok(held
        .into_iter()
        .map(|h| LeaseRef {
            job: h.id,
            attempt: h.attempts,
            stream: h.stream,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::{ClaimFilter, full_claim_sql};

    #[test]
    fn a_claim_writes_only_the_conditions_its_filter_needs() {
        // Kept prepared, a statement's generic plan cannot fold a
        // parameter's emptiness away: the text must not ask for it.
        let any = full_claim_sql(&ClaimFilter::default());
        for asked in [
            "cardinality($1",
            "cardinality($2",
            "ANY($1)",
            "ANY($2)",
            "$9",
        ] {
            assert!(!any.contains(asked), "{asked}");
        }
        let named = full_claim_sql(&ClaimFilter {
            names: vec!["a".into()],
            modules: vec!["m".into()],
            plain_only: true,
        });
        assert!(named.contains("j.name = ANY($1)"));
        assert!(named.contains(r#"j."moduleName" = ANY($2)"#));
        assert!(named.contains(r#"j."moduleName" IS NULL"#));
        assert!(!named.contains("cardinality($1"));
    }
}
