//! The Overview's markup and its throughput chart.

use std::fmt::Write as _;

use chrono::NaiveDateTime;
use maud::{Markup, html};

use super::{age, raw};
use crate::{dispatch::RegistryStats, domain::overview::QueueOverview};

/// The page's content.
pub fn content(queue: &QueueOverview, workers: RegistryStats, database: Option<&str>) -> Markup {
    let (completed, failed) = queue
        .minutes
        .iter()
        .fold((0, 0), |(c, f), (_, mc, mf)| (c + mc, f + mf));
    html! {
        section.cards {
            div.card {
                h2 { "Workers" }
                p.big { (workers.streams) }
                p.muted { "connected Work streams on this replica · "
                    (workers.held_slots) " jobs held · " (workers.free_slots) " free slots" }
                p { a href="/console/workers" { "See workers" } }
            }
            div.card {
                h2 { "Database" }
                @match database {
                    None => { p.big.ok { "healthy" } p.muted { "answers, migrated, not draining" } }
                    Some(reason) => { p.big.bad { "not ready" } p.muted { (reason) } }
                }
            }
            div.card {
                h2 { "Last hour" }
                p.big { (completed) " done" }
                p.muted { (failed) " failed for good" }
            }
        }
        section {
            h2 { "Throughput, last hour" }
            figure.chart { (raw(chart(&queue.minutes))) }
        }
        section {
            h2 { "Job names" }
            @if queue.names.is_empty() {
                p.muted { "No job is waiting, running or failed in the last hour." }
            } @else {
                table {
                    thead { tr {
                        th { "Name" } th.num { "Pending" } th.num { "Running" }
                        th.num { "Failed (1 h)" } th { "Oldest pending" }
                    } }
                    tbody {
                        @for (name, line) in &queue.names {
                            tr {
                                td { a href={ "/console/jobs?name=" (encode(name)) } { (name) } }
                                td.num { a href={ "/console/jobs?status=PENDING&name=" (encode(name)) } { (line.pending) } }
                                td.num { a href={ "/console/jobs?status=RUNNING&name=" (encode(name)) } { (line.running) } }
                                td.num {
                                    @if line.failed_last_hour > 0 {
                                        a.bad href={ "/console/jobs?status=FAILED&name=" (encode(name)) } { (line.failed_last_hour) }
                                    } @else { "0" }
                                }
                                td { @match line.oldest_pending_secs {
                                    Some(secs) => { (age(secs)) }
                                    None => { span.muted { "—" } }
                                } }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A query-string value, percent-encoded.
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The last hour as stacked bars per minute (completed, failed), drawn as
/// SVG: no script, no library.
pub fn chart(minutes: &[(NaiveDateTime, i64, i64)]) -> String {
    const WIDTH: usize = 720;
    const HEIGHT: usize = 160;
    const PAD: usize = 24;
    let max = minutes
        .iter()
        .map(|(_, c, f)| c + f)
        .max()
        .unwrap_or(0)
        .max(1);
    let bar = (WIDTH - PAD) / minutes.len().max(1);
    let plot = (HEIGHT - PAD) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="Jobs finished per minute, last hour" class="throughput">"#
    );
    let _ = write!(
        svg,
        r#"<line x1="{PAD}" y1="{plot}" x2="{WIDTH}" y2="{plot}" class="axis"/><text x="0" y="12" class="label">{max}</text><text x="0" y="{plot}" class="label">0</text>"#
    );
    for (i, (minute, completed, failed)) in minutes.iter().enumerate() {
        let x = PAD + i * bar;
        let done_h = plot * (*completed as f64) / (max as f64);
        let fail_h = plot * (*failed as f64) / (max as f64);
        let width = bar.saturating_sub(1).max(1);
        let _ = write!(
            svg,
            r#"<g><title>{} UTC: {completed} completed, {failed} failed</title><rect x="{x}" y="{:.1}" width="{width}" height="{done_h:.1}" class="done"/><rect x="{x}" y="{:.1}" width="{width}" height="{fail_h:.1}" class="failed"/></g>"#,
            minute.format("%H:%M"),
            plot - done_h,
            plot - done_h - fail_h,
        );
    }
    if let (Some((first, ..)), Some((last, ..))) = (minutes.first(), minutes.last()) {
        let _ = write!(
            svg,
            r#"<text x="{PAD}" y="{HEIGHT}" class="label">{}</text><text x="{}" y="{HEIGHT}" class="label" text-anchor="end">{}</text>"#,
            first.format("%H:%M"),
            WIDTH,
            last.format("%H:%M")
        );
    }
    svg.push_str("</svg>");
    svg
}
