//! Where PostgreSQL spent a benchmark's time, from `pg_stat_statements`
//! (loaded into the bench's cluster when `BENCH_PG_STATS=1`).

use super::Bench;

/// Whether `BENCH_PG_STATS=1` asks for where PostgreSQL spent each
/// drain's time ([`Bench::pg_stats_reset`], [`Bench::pg_stats_report`]).
pub(super) fn wanted() -> bool {
    std::env::var("BENCH_PG_STATS").as_deref() == Ok("1")
}

impl Bench {
    /// With `BENCH_PG_STATS=1`: forgets what `pg_stat_statements` counted,
    /// so that the next report covers what follows.
    pub async fn pg_stats_reset(&self) {
        if wanted() {
            self.pg_stats_query(
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; \
                 SELECT pg_stat_statements_reset()",
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
