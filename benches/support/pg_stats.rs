//! Where PostgreSQL spent a benchmark's time, from `pg_stat_statements`
//! (loaded into the bench's cluster when `BENCH_PG_STATS=1`).

use super::Bench;

/// Whether `BENCH_PG_STATS=1` asks for where PostgreSQL spent each
/// drain's time ([`Bench::pg_stats_reset`], [`Bench::pg_stats_report`]).
pub(super) fn wanted() -> bool {
    std::env::var("BENCH_PG_STATS").as_deref() == Ok("1")
}

/// The bench cluster's extra settings: `pg_stat_statements` when
/// [`wanted`], and whatever `BENCH_PG_SETTINGS` lists (`;`-separated
/// `name=value`, e.g. `auto_explain.log_min_duration=5ms`, with
/// `auto_explain` among the libraries it preloads) to look closer at one
/// run. The cluster's log stays in its directory under the temporary
/// directory until the next run starts.
pub(super) fn cluster_settings() -> Vec<String> {
    let mut libraries: Vec<String> = Vec::new();
    let mut settings: Vec<String> = Vec::new();
    if wanted() {
        libraries.push("pg_stat_statements".into());
        settings.push("pg_stat_statements.track_planning=on".into());
    }
    let extra = std::env::var("BENCH_PG_SETTINGS").unwrap_or_default();
    for setting in extra.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        match setting.strip_prefix("shared_preload_libraries=") {
            Some(named) => libraries.extend(named.split(',').map(|l| l.trim().to_string())),
            None => settings.push(setting.to_string()),
        }
    }
    if !libraries.is_empty() {
        settings.push(format!("shared_preload_libraries={}", libraries.join(",")));
    }
    settings
}

impl Bench {
    /// With `BENCH_PG_STATS=1`: forgets what `pg_stat_statements` counted,
    /// so that the next report covers what follows.
    pub async fn pg_stats_reset(&self) {
        if wanted() {
            self.pg_stats_query(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
                 SELECT pg_stat_statements_reset(); SELECT pg_stat_reset()",
            )
            .await;
        }
    }

    /// With `BENCH_PG_STATS=1`: the statements that took the most of
    /// PostgreSQL's time since [`Bench::pg_stats_reset`], planning and
    /// execution apart, per call and in all.
    pub async fn pg_stats_report(&self, label: &str) {
        if !wanted() {
            return;
        }
        println!("{label}: where PostgreSQL spent its time (pg_stat_statements)");
        let report = self
            .pg_stats_query(
                "SELECT lpad(calls::text, 7) || ' calls ' \
                        || lpad(round((total_plan_time / calls)::numeric, 2)::text, 7) \
                        || ' ms plan ' \
                        || lpad(round((total_exec_time / calls)::numeric, 2)::text, 7) \
                        || ' ms exec ' \
                        || lpad(round(((total_plan_time + total_exec_time) / 1000)::numeric, 2)::text, 6) \
                        || ' s  ' || left(regexp_replace(query, '\\s+', ' ', 'g'), 110) \
                 FROM pg_stat_statements WHERE calls > 0 \
                 ORDER BY total_plan_time + total_exec_time DESC LIMIT 12",
            )
            .await;
        for line in report.lines() {
            println!("  {line}");
        }
        println!("{label}: buffers read or hit, per table and index (pg_statio)");
        let buffers = self
            .pg_stats_query(
                "SELECT lpad((heap_blks_hit + heap_blks_read)::text, 10) || ' heap ' \
                        || lpad((coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0))::text, 10) \
                        || ' all indexes  ' || relname || '  (' || n_tup_upd || ' updates, ' \
                        || n_tup_hot_upd || ' HOT)' \
                 FROM pg_statio_user_tables JOIN pg_stat_user_tables USING (relid, relname) \
                 WHERE heap_blks_hit + heap_blks_read > 1000 \
                 ORDER BY heap_blks_hit + heap_blks_read DESC LIMIT 6; \
                 SELECT lpad((idx_blks_hit + idx_blks_read)::text, 10) || ' ' || indexrelname \
                 FROM pg_statio_user_indexes WHERE idx_blks_hit + idx_blks_read > 1000 \
                 ORDER BY idx_blks_hit + idx_blks_read DESC LIMIT 16",
            )
            .await;
        for line in buffers.lines() {
            println!("  {line}");
        }
    }

    async fn pg_stats_query(&self, sql: &str) -> String {
        let output = tokio::process::Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-d", &self.database_url, "-c", sql])
            .output()
            .await
            .expect("psql");
        if !output.status.success() {
            println!("  psql: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}
