//! The replica's ear on the `caller_changes` and `account_changes`
//! channels, and the fence writers wait on (after a change of callers or of
//! an account's view, a successful Login included). One dedicated
//! connection (outside the pool) per replica, for the replica's whole life,
//! reconnecting with backoff; on each (re)connection it checks that the
//! trigger announcing account changes fires, and the cache keeps no account
//! while it does not.
//!
//! Payloads on `account_changes`: `account:<id>` (from the trigger; evicts
//! that account's view; anything else empties the cache). Payloads on
//! `caller_changes` (the first four come from the triggers; the
//! replicas' own are signed with the [`ChannelKey`] every replica derives
//! from the shared secret, `<message>:<signature>`, and unsigned ones are
//! ignored, because any role that can connect may NOTIFY):
//! - `session:<id>`, `key:<id>`, `user:<id>`, `all` — evict (anything else
//!   on the channel, e.g. an operator's bare `NOTIFY caller_changes`, also
//!   empties the cache);
//! - `ping:<replica>:<n>` — every [`PING_EVERY`] each replica pings; its own
//!   echo tells its cache that everything committed before the ping has been
//!   applied, and the others note that the replica is alive;
//! - `fence:<replica>:<n>` — sent by a replica after a call that may have
//!   changed callers or an account's view committed; every other replica answers
//!   `ack:<replica>:<n>:<itself>` once it reaches it, i.e. after applying
//!   every change committed before it. When the writer's own listener
//!   reaches its fence, it knows which replicas it must hear from: those
//!   whose ping it heard within [`FRESHNESS`] (a replica that could still be
//!   serving from a cache that missed the change has pinged within that
//!   window, and its pings reached the writer before the fence, in commit
//!   order).
//!
//! Why a writer may answer once those replicas acknowledged, or after
//! [`FENCE_TIMEOUT`] in any case: a replica serves at time `t` only with the
//! echo of a ping it sent after `t − FRESHNESS`. If that ping committed after
//! the change, the replica applied the change before the echo (commit
//! order). If it committed before the change, the writer heard it before its
//! own fence, after `t − FRESHNESS` — so the replica is among those the
//! writer waits for — unless `t` is within [`FRESHNESS`] of the change, which
//! waiting out the timeout (never shorter) excludes. A writer whose own
//! listener is younger than [`FRESHNESS`] (it missed earlier pings) just waits
//! out the window.
//!
//! A replica takes its own pings' echoes only from its own backend process
//! (the notification says which sent it), and another replica's pings only
//! in increasing order, so a recorded ping replayed later revives nothing.
//! Concurrent fences are coalesced: one is in flight at a time, and a call
//! that arrived before the fence in flight was sent is covered by it, so a
//! flood of identity calls costs one fence per round trip, not one each.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use diesel_async::AsyncPgConnection;
use futures_util::StreamExt as _;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{CallerCache, Change, ChannelKey, FENCE_TIMEOUT, FRESHNESS, PING_EVERY};
use crate::{
    db::{self, DbPool},
    error::AppError,
    store::caller_changes::{self, ACCOUNT_CHANNEL, CHANNEL},
};

/// How long connecting or one statement on the connection may take.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Most other replicas remembered (only signed pings add one).
const MAX_PEERS: usize = 256;

/// The listener and the fences of one replica; clones share them.
#[derive(Clone)]
pub struct CallerFeed {
    inner: Arc<Inner>,
}

struct Inner {
    cache: CallerCache,
    /// This replica's name on the channel.
    replica: String,
    /// For sending fences.
    pool: DbPool,
    /// Signs and checks the replicas' own messages.
    key: ChannelKey,
    fences: Mutex<Fences>,
    /// One fence in flight at a time (see the module documentation).
    turn: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Fences {
    /// Since when the listener has been connected (`None`: it is not).
    /// Pings sent before it connected were not heard, so until it has
    /// listened for [`FRESHNESS`] it does not know every replica that may
    /// be serving.
    listening_since: Option<Instant>,
    next: u64,
    waiting: HashMap<u64, Waiter>,
    /// When each other replica's last ping was heard, and its number.
    peers: HashMap<String, (Instant, u64)>,
    /// When the last fence that released its writers was sent: every call
    /// that arrived before then is covered by it.
    covered_until: Option<Instant>,
}

#[derive(Debug)]
struct Waiter {
    /// Who must acknowledge; known once the writer's own listener reached
    /// the fence.
    required: Option<HashSet<String>>,
    acked: HashSet<String>,
    done: Option<oneshot::Sender<()>>,
}

impl Fences {
    /// Releases the writers whose required replicas all answered (or fell
    /// silent for longer than [`FRESHNESS`]: they no longer serve).
    fn settle(&mut self, now: Instant) {
        let peers = &self.peers;
        let alive = |r: &String| {
            peers
                .get(r)
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) < FRESHNESS)
        };
        for waiter in self.waiting.values_mut() {
            let Some(required) = &waiter.required else {
                continue;
            };
            if required
                .iter()
                .all(|r| waiter.acked.contains(r) || !alive(r))
                && let Some(done) = waiter.done.take()
            {
                let _ = done.send(());
            }
        }
    }
}

impl CallerFeed {
    /// The feed of `cache`, sending fences through `pool`, signing with
    /// `key`.
    pub fn new(cache: CallerCache, pool: DbPool, key: ChannelKey) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache,
                replica: Uuid::new_v4().simple().to_string(),
                pool,
                key,
                fences: Mutex::default(),
                turn: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The cache this feed keeps.
    pub fn cache(&self) -> &CallerCache {
        &self.inner.cache
    }

    fn fences(&self) -> MutexGuard<'_, Fences> {
        self.inner
            .fences
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once every live replica has applied what was committed
    /// before this call (see the module documentation), or after
    /// [`FENCE_TIMEOUT`]. Call it after a call that may have changed a
    /// caller or an account's view (a successful Login sets `lastLogin`),
    /// before answering.
    pub async fn fence(&self) {
        let started = Instant::now();
        let waited_out = (started + FRESHNESS).into();
        // Until our listener has listened for FRESHNESS it may not have
        // heard every replica that is serving (pings sent before it
        // connected were not delivered to it). Waiting out the freshness
        // window from our own start is always enough on its own: a replica
        // that has not applied the change has stopped serving by then.
        loop {
            let since = self.fences().listening_since;
            match since {
                Some(since) if since.elapsed() >= FRESHNESS => break,
                Some(since) if since + FRESHNESS < started + FRESHNESS => {
                    tokio::time::sleep_until((since + FRESHNESS).into()).await;
                }
                _ => {
                    tokio::time::sleep_until(waited_out).await;
                    return;
                }
            }
        }
        // Coalescing: wait for the fence in flight; if it was sent after
        // this call arrived, it covers this call's change too.
        let _turn = self.inner.turn.lock().await;
        if self
            .fences()
            .covered_until
            .is_some_and(|sent| sent > started)
        {
            return;
        }
        let (done, finished) = oneshot::channel();
        let n = {
            let mut fences = self.fences();
            let n = fences.next;
            fences.next += 1;
            fences.waiting.insert(
                n,
                Waiter {
                    required: None,
                    acked: HashSet::new(),
                    done: Some(done),
                },
            );
            n
        };
        let payload = self
            .inner
            .key
            .sign(&format!("fence:{}:{n}", self.inner.replica));
        let sent = Instant::now();
        let outcome = tokio::time::timeout(FENCE_TIMEOUT, async {
            // Through the pool's one way of running work, so that behind a
            // transaction pooler the statement stays on one server session.
            db::with_connection(&self.inner.pool, "callers.fence", async |conn| {
                Ok(caller_changes::notify(conn, &payload).await?)
            })
            .await?;
            finished
                .await
                .map_err(|_| AppError::Unavailable("listener stopped".into()))
        })
        .await;
        self.fences().waiting.remove(&n);
        match outcome {
            Ok(Ok(())) => self.fences().covered_until = Some(sent),
            Ok(Err(error)) => {
                tracing::warn!(%error, "caller change fence failed; waiting out the freshness window");
                tokio::time::sleep_until((started + FRESHNESS).into()).await;
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = FENCE_TIMEOUT.as_millis() as u64,
                    "a replica did not acknowledge a caller change in time; answering anyway"
                );
                // Waited out: a replica that did not answer stopped serving.
                self.fences().covered_until = Some(sent);
            }
        }
    }

    /// Listens until `shutdown`.
    pub async fn run(self, url: String, shutdown: CancellationToken) {
        let mut pause = Duration::from_millis(100);
        let mut reported = false;
        let mut warned_accounts = false;
        while !shutdown.is_cancelled() {
            let connected = tokio::select! {
                () = shutdown.cancelled() => return,
                connected = connect(&url) => connected,
            };
            match connected {
                Ok((mut conn, pid, accounts_announced)) => {
                    if reported {
                        tracing::info!("caller change notifications connected again");
                    }
                    if !accounts_announced && !warned_accounts {
                        tracing::warn!(
                            "the account_changes trigger on users is missing or disabled: the account cache is off until it fires again (checked on each reconnection)"
                        );
                        warned_accounts = true;
                    }
                    pause = Duration::from_millis(100);
                    reported = false;
                    self.inner.cache.connected(accounts_announced);
                    self.fences().listening_since = Some(Instant::now());
                    self.listen(&mut conn, pid, &shutdown).await;
                    self.fences().listening_since = None;
                    self.inner.cache.disconnected();
                }
                Err(error) => {
                    if !reported {
                        tracing::warn!(%error, "cannot listen for caller changes (the caller cache is off until then); retrying");
                        reported = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Pings and applies notifications until the connection fails.
    async fn listen(&self, conn: &mut AsyncPgConnection, pid: i32, shutdown: &CancellationToken) {
        let mut pings = Pings::default();
        let mut next_ping = Instant::now();
        loop {
            if Instant::now() >= next_ping {
                let payload = self.inner.key.sign(&pings.send(&self.inner.replica));
                let sent = tokio::select! {
                    () = shutdown.cancelled() => return,
                    sent = send(conn, &payload) => sent,
                };
                if let Err(error) = sent {
                    tracing::warn!(%error, "caller change notifications connection failed");
                    return;
                }
                next_ping = Instant::now() + PING_EVERY;
                let mut fences = self.fences();
                let now = Instant::now();
                fences
                    .peers
                    .retain(|_, (at, _)| now.saturating_duration_since(*at) < FRESHNESS * 10);
                fences.settle(now);
            }
            let next = {
                let mut notifications = pin!(conn.notifications_stream());
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = notifications.next() => Some(next),
                    () = tokio::time::sleep_until(next_ping.into()) => None,
                }
            };
            match next {
                Some(Some(Ok(notification))) if notification.channel == ACCOUNT_CHANNEL => {
                    let change = match notification.payload.split_once(':') {
                        Some(("account", id)) => Uuid::try_parse(id).ok().map(Change::Account),
                        _ => None,
                    };
                    self.inner.cache.apply(change.unwrap_or(Change::All));
                }
                Some(Some(Ok(notification))) => {
                    let from_me = notification.process_id == pid;
                    if let Some(reply) = self.on_payload(&notification.payload, from_me, &mut pings)
                        && let Err(error) = send(conn, &self.inner.key.sign(&reply)).await
                    {
                        tracing::warn!(%error, "caller change notifications connection failed");
                        return;
                    }
                }
                Some(Some(Err(error))) => {
                    tracing::warn!(%error, "caller change notifications connection failed");
                    return;
                }
                Some(None) => {
                    tracing::warn!("caller change notifications connection closed");
                    return;
                }
                None => {}
            }
        }
    }

    /// Applies one payload (`from_me`: sent by this listener's own
    /// backend); returns what to answer on the channel, unsigned, if
    /// anything.
    fn on_payload(&self, payload: &str, from_me: bool, pings: &mut Pings) -> Option<String> {
        let me = self.inner.replica.as_str();
        tracing::trace!(replica = me, payload, "caller change");
        let signed = ["ping:", "fence:", "ack:"]
            .iter()
            .any(|kind| payload.starts_with(kind));
        let payload = if signed {
            match self.inner.key.verify(payload) {
                Some(message) => message,
                None => {
                    tracing::debug!(payload, "unsigned or forged replica message; ignored");
                    return None;
                }
            }
        } else {
            payload
        };
        let mut parts = payload.split(':');
        let (kind, first, second, third) = (parts.next(), parts.next(), parts.next(), parts.next());
        let id = || first.and_then(|id| Uuid::try_parse(id).ok());
        let change = match (kind, id()) {
            (Some("session"), Some(id)) => Some(Change::Session(id)),
            (Some("key"), Some(id)) => Some(Change::ApiKey(id)),
            (Some("user"), Some(id)) => Some(Change::User(id)),
            _ => None,
        };
        if let Some(change) = change {
            self.inner.cache.apply(change);
            return None;
        }
        let n = second.and_then(|n| n.parse::<u64>().ok());
        match (kind, first, n) {
            (Some("ping"), Some(replica), Some(n)) => {
                if replica == me {
                    // Only the echo of what this backend sent proves that
                    // everything committed before it has been applied.
                    if from_me && let Some(sent) = pings.echoed(n) {
                        self.inner.cache.echoed(sent);
                    }
                } else {
                    let mut fences = self.fences();
                    let known = fences.peers.get(replica).map(|(_, last)| *last);
                    let fresh = known.is_none_or(|last| n > last);
                    let room = known.is_some() || fences.peers.len() < MAX_PEERS;
                    if fresh && room {
                        fences.peers.insert(replica.to_owned(), (Instant::now(), n));
                    }
                }
                None
            }
            (Some("fence"), Some(replica), Some(n)) => {
                if replica != me {
                    return Some(format!("ack:{replica}:{n}:{me}"));
                }
                let mut fences = self.fences();
                let now = Instant::now();
                let alive: HashSet<String> = fences
                    .peers
                    .iter()
                    .filter(|(_, (at, _))| now.saturating_duration_since(*at) < FRESHNESS)
                    .map(|(r, _)| r.clone())
                    .collect();
                if let Some(waiter) = fences.waiting.get_mut(&n) {
                    waiter.required = Some(alive);
                }
                fences.settle(now);
                None
            }
            (Some("ack"), Some(replica), Some(n)) if replica == me => {
                if let Some(from) = third {
                    let mut fences = self.fences();
                    if let Some(waiter) = fences.waiting.get_mut(&n) {
                        waiter.acked.insert(from.to_owned());
                    }
                    fences.settle(Instant::now());
                }
                None
            }
            (Some("ack"), _, _) => None,
            _ => {
                tracing::debug!(payload, "unknown caller change; emptying the cache");
                self.inner.cache.apply(Change::All);
                None
            }
        }
    }
}

/// Pings of this replica whose echo has not come back yet.
#[derive(Debug, Default)]
struct Pings {
    next: u64,
    outstanding: VecDeque<(u64, Instant)>,
}

impl Pings {
    fn send(&mut self, replica: &str) -> String {
        let n = self.next;
        self.next += 1;
        // Echoes that never come (they cannot, in order, unless the
        // connection is gone) must not pile up.
        if self.outstanding.len() >= 64 {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back((n, Instant::now()));
        format!("ping:{replica}:{n}")
    }

    /// When ping `n` was sent, if it is outstanding (and forgets it and
    /// every earlier one).
    fn echoed(&mut self, n: u64) -> Option<Instant> {
        let mut sent = None;
        while let Some(&(m, at)) = self.outstanding.front() {
            if m > n {
                break;
            }
            self.outstanding.pop_front();
            if m == n {
                sent = Some(at);
            }
        }
        sent
    }
}

/// The listening connection, its backend's process id, and whether account
/// changes are announced (checked after LISTEN: a trigger enabled later is
/// seen on the next reconnection).
async fn connect(url: &str) -> Result<(AsyncPgConnection, i32, bool), AppError> {
    let mut conn =
        db::dedicated_connection(url, "control-plane caller changes", "", STATEMENT_TIMEOUT)
            .await?;
    let (pid, accounts) = tokio::time::timeout(STATEMENT_TIMEOUT, async {
        caller_changes::listen(&mut conn).await?;
        let pid = caller_changes::backend_pid(&mut conn).await?;
        caller_changes::account_trigger_enabled(&mut conn)
            .await
            .map(|enabled| (pid, enabled))
    })
    .await
    .map_err(|_| AppError::Unavailable(format!("timed out listening on {CHANNEL}")))??;
    Ok((conn, pid, accounts))
}

async fn send(conn: &mut AsyncPgConnection, payload: &str) -> Result<(), AppError> {
    tokio::time::timeout(STATEMENT_TIMEOUT, caller_changes::notify(conn, payload))
        .await
        .map_err(|_| AppError::Unavailable("the connection stopped answering".into()))?
        .map_err(AppError::from)
}
