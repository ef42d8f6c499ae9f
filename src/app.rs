//! The services a running server shares between its handlers and workers.

use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

use crate::auth::JwtKeys;
use crate::channels::oauth::state_key;
use crate::config::ServerConfig;
use crate::crypto::Keyring;
use crate::db::{Db, TenantConn, TenantScope};
use crate::error::{AppError, AppResult};
use crate::inbox::events::EventLog;
use crate::meta::GraphClient;

pub struct AppState {
    pub db: Db,
    pub config: Arc<ServerConfig>,
    pub graph: GraphClient,
    pub keys: Keyring,
    pub jwt: JwtKeys,
    /// Key that signs OAuth `state` values.
    pub state_key: Vec<u8>,
    /// Key that signs media links (`POST /api/messages/{id}/attachments/{index}/link`).
    pub link_key: Vec<u8>,
    /// Key that signs notice mails' unsubscribe links (`inbox::notice_mail`).
    pub unsubscribe_key: Arc<Vec<u8>>,
    /// Wakes this instance's webhook processor (a webhook was stored here).
    pub wake_processor: Arc<Notify>,
    /// Webhooks this instance has stored (the processor gathers by it).
    pub webhooks_stored: Arc<std::sync::atomic::AtomicU64>,
    /// The last webhook batch claimed all it could: helpers join in. A
    /// watch, so an idle helper sleeps until it changes instead of polling.
    pub processor_behind: Arc<tokio::sync::watch::Sender<bool>>,
    /// Wakes this instance's sender (a reply was queued here).
    pub wake_sender: Arc<Notify>,
    /// The sends under way here, which a stopping server waits for.
    pub sends: Arc<crate::inbox::sender::UnderWay>,
    /// Wakes this instance's mail worker (a mail was queued here).
    pub wake_mail: Arc<Notify>,
    /// Wakes the spare-schema refill (a tenant was created here).
    pub spares_wanted: Arc<Notify>,
    /// Wakes erasure's pass over processed webhooks (`inbox::scrub`; a
    /// contact was erased here).
    pub wake_scrub: Arc<Notify>,
    /// How committed events reach this instance's sockets.
    pub feed: Arc<crate::realtime::Feed>,
    /// Tenants whose search indexes have entries to merge.
    pub search_backlog: Arc<crate::inbox::search_index::SearchBacklog>,
    /// The cross-instance bus (typing, presence, access changes).
    pub bus: Arc<dyn crate::realtime::Bus>,
    /// Verified webhook bodies on their way into `public.webhook_events`.
    pub webhook_store: mpsc::Sender<crate::inbox::processor::StoreRequest>,
    store_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<crate::inbox::processor::StoreRequest>>>,
    /// Contacts whose profile to look up at Meta.
    pub profile_lookups: mpsc::Sender<crate::inbox::contacts::ProfileLookup>,
    profile_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<crate::inbox::contacts::ProfileLookup>>>,
    /// Stale profiles queued from a look at their conversation, and when.
    pub profile_refreshes: crate::inbox::contacts::StaleRetries,
    /// Messenger and Instagram media to copy off Meta's CDN.
    pub media_copies: mpsc::Sender<crate::inbox::media_copies::MediaCopy>,
    copy_rx: Arc<tokio::sync::Mutex<mpsc::Receiver<crate::inbox::media_copies::MediaCopy>>>,
    /// Where those copies may be fetched from.
    pub cdn_hosts: crate::inbox::media_copies::CdnHosts,
    /// Copies queued again from a look at their attachment, and when.
    pub copy_retries: crate::inbox::media_copies::Retries,
    /// When each (tenant, conversation, agent) last showed a contact the
    /// business typing, from a socket or `POST …/typing`.
    typing_sent: std::sync::Mutex<std::collections::HashMap<(i64, i64, i64), std::time::Instant>>,
    /// Failed logins per account (see `auth::throttle`).
    pub login_throttle: crate::auth::throttle::LoginThrottle,
    /// WhatsApp media URLs Meta gave, kept for a player's next part.
    pub media_urls: crate::inbox::media::MediaUrls,
    /// Tenants with a sweep of kept changes due soon (`inbox::processor`).
    pub sweeps_due: std::sync::Mutex<std::collections::HashSet<i64>>,
    /// WhatsApp business accounts' templates as last read (`inbox::templates`).
    pub templates: std::sync::Arc<crate::inbox::templates::TemplateCache>,
    /// Who is online, as this instance's hub shows it (`realtime::online`).
    pub online: Arc<crate::realtime::Online>,
    /// Agents' files read at once ([`crate::inbox::uploads::READ_AT_ONCE`]).
    pub uploads: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(config: Arc<ServerConfig>, db: Db) -> AppState {
        let (tx, rx) = mpsc::channel(10_000);
        let (store_tx, store_rx) = mpsc::channel(10_000);
        let (copy_tx, copy_rx) = mpsc::channel(10_000);
        AppState {
            webhook_store: store_tx,
            store_rx: Arc::new(tokio::sync::Mutex::new(store_rx)),
            wake_processor: Arc::new(Notify::new()),
            processor_behind: Arc::new(tokio::sync::watch::Sender::new(false)),
            webhooks_stored: Arc::default(),
            wake_sender: Arc::new(Notify::new()),
            sends: Arc::default(),
            spares_wanted: Arc::new(Notify::new()),
            wake_mail: Arc::new(Notify::new()),
            wake_scrub: Arc::new(Notify::new()),
            profile_lookups: tx,
            bus: Arc::new(crate::realtime::PgBus::new(db.pool().clone())),
            feed: Arc::default(),
            search_backlog: Arc::default(),
            profile_rx: Arc::new(tokio::sync::Mutex::new(rx)),
            profile_refreshes: crate::inbox::contacts::stale_retries(),
            media_copies: copy_tx,
            copy_rx: Arc::new(tokio::sync::Mutex::new(copy_rx)),
            cdn_hosts: crate::inbox::media_copies::CdnHosts::new(&config.meta.graph_url),
            copy_retries: crate::inbox::media_copies::retries(),
            typing_sent: Default::default(),
            sweeps_due: Default::default(),
            templates: Default::default(),
            online: Default::default(),
            uploads: Arc::new(tokio::sync::Semaphore::new(crate::inbox::uploads::READ_AT_ONCE)),
            media_urls: Default::default(),
            login_throttle: crate::auth::throttle::LoginThrottle::from_env(),
            graph: GraphClient::new(&config.meta),
            keys: Keyring::new(&config.encryption_keys),
            jwt: JwtKeys::new(config.jwt_secret.expose()),
            state_key: state_key(config.jwt_secret.expose()),
            link_key: crate::signed::key(config.jwt_secret.expose(), "switchboard media link v1"),
            unsubscribe_key: Arc::new(crate::inbox::notice_mail::unsubscribe_key(config.jwt_secret.expose())),
            db,
            config,
        }
    }

    /// Whether a typing indicator for this agent and conversation should go
    /// to Meta now: "on" at most every 5 s, "off" always (and it resets).
    pub fn typing_due(&self, tenant: i64, conversation: i64, user: i64, on: bool) -> bool {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
        let Ok(mut sent) = self.typing_sent.lock() else { return true };
        let now = std::time::Instant::now();
        // Kept small: what is older than the period no longer matters.
        sent.retain(|_, at| now.duration_since(*at) < EVERY);
        let key = (tenant, conversation, user);
        if !on {
            sent.remove(&key);
            return true;
        }
        if sent.contains_key(&key) {
            return false;
        }
        sent.insert(key, now);
        true
    }

    /// The receiving end of the webhook store queue, held by its one writer
    /// for as long as it runs: a writer started again after a panic
    /// ([`supervise`]) takes it up where the last left it.
    pub async fn store_queue(&self) -> QueueHold<crate::inbox::processor::StoreRequest> {
        self.store_rx.clone().lock_owned().await
    }

    /// The receiving end of the profile-lookup queue (as [`Self::store_queue`]).
    pub async fn profile_queue(&self) -> QueueHold<crate::inbox::contacts::ProfileLookup> {
        self.profile_rx.clone().lock_owned().await
    }

    /// The receiving end of the media-copy queue (as [`Self::store_queue`]).
    pub async fn copy_queue(&self) -> QueueHold<crate::inbox::media_copies::MediaCopy> {
        self.copy_rx.clone().lock_owned().await
    }

    /// A tenant unit of work that logs events: they are written in its
    /// transaction and, once it has committed, handed to this instance's
    /// sockets without being read back (other instances read them from the
    /// log when they hear of them).
    pub async fn tenant_with_events<T, F>(&self, scope: TenantScope, f: F) -> AppResult<T>
    where
        F: FnOnce(&mut TenantConn<'_>, &mut EventLog) -> AppResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let tenant = scope.tenant.0;
        // With mail on, the notices of members not online are mailed
        // (`inbox::notice_mail`), queued in this same transaction.
        let mailing = self.config.mail.as_ref().map(|m| {
            let public_url = self.config.public_url.clone();
            (self.online.clone(), m.conversation_url.clone(), public_url, self.unsubscribe_key.clone())
        });
        let (out, written, mailed) = self
            .db
            .tenant(scope, move |tc| {
                let mut log = EventLog::new();
                let out = f(tc, &mut log)?;
                // A member's own notices are kept for them
                // (`inbox::notifications`), in this same transaction.
                let notices = log.member_notices();
                crate::inbox::notifications::keep(tc, &mut log, &notices)?;
                let mut mailed = 0;
                if let Some((online, url, public_url, key)) = mailing.filter(|_| !notices.is_empty()) {
                    let online = online.of(scope.tenant);
                    let reach = crate::inbox::notice_mail::Reach {
                        online: &online,
                        conversation_url: url.as_deref(),
                        public_url: &public_url,
                        unsubscribe_key: &key,
                    };
                    mailed = crate::inbox::notice_mail::queue(tc, &notices, &reach)?;
                }
                Ok::<_, AppError>((out, log.write(tc)?, mailed))
            })
            .await?;
        self.feed.committed(tenant, written, crate::realtime::hub::Pace::Now);
        if mailed > 0 {
            self.wake_mail.notify_one();
        }
        Ok(out)
    }

    /// Where Meta sends the browser back after the OAuth dialog.
    pub fn oauth_redirect_uri(&self) -> String {
        format!("{}/api/channels/facebook/oauth/callback", self.config.public_url)
    }
}

/// A worker's hold on the receiving end of one of the state's queues.
pub type QueueHold<T> = tokio::sync::OwnedMutexGuard<mpsc::Receiver<T>>;

/// Runs the worker `start` makes on the current actix runtime, and starts it
/// again after it panicked: tokio ends a panicking task quietly, and a
/// worker gone that way (the sender, the webhook processor) would leave the
/// server answering requests while replies or webhooks wait for ever. A
/// second before the first restart, doubling to a minute while it keeps
/// panicking within a minute of starting; each is logged and counted
/// (`switchboard_worker_restarts_total`). A worker that returns, or is
/// cancelled by the runtime stopping, is not started again.
pub fn supervise<F, Fut>(name: &'static str, mut start: F)
where
    F: FnMut() -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    const FIRST: std::time::Duration = std::time::Duration::from_secs(1);
    const MOST: std::time::Duration = std::time::Duration::from_secs(60);
    actix_web::rt::spawn(async move {
        let mut pause = FIRST;
        loop {
            let started = std::time::Instant::now();
            match actix_web::rt::spawn(start()).await {
                Err(e) if e.is_panic() => {
                    if started.elapsed() >= MOST {
                        pause = FIRST;
                    }
                    crate::metrics::inc(&crate::metrics::WORKER_RESTARTS, 1);
                    tracing::error!(worker = name, restart_in = ?pause, "worker panicked; starting it again");
                    actix_web::rt::time::sleep(pause).await;
                    pause = (pause * 2).min(MOST);
                }
                _ => return,
            }
        }
    });
}

/// Runs one item of a worker's work (a reply, a mail, a delivery to an
/// integrator) so that a panic in it ends only that item: the panic's text
/// comes back as an error, to be settled as that item's failure, and the
/// items after it go on. ([`supervise`] is for the worker as a whole.)
pub async fn contained<T>(work: impl std::future::Future<Output = T>) -> Result<T, String> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(work).catch_unwind().await.map_err(|panic| panic_text(&panic))
}

/// What a panic said (its message), for a log line or a stored error.
pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Starts the background workers of `serve`: webhook processor, sender,
/// profile lookups, the snooze clock, event pruning, the search index
/// merges, the spare tenant schemas, integrators' webhooks, erasure's pass
/// over processed webhooks and the public tables' housekeeping (on the current actix runtime).
pub fn spawn_workers(state: &actix_web::web::Data<AppState>) {
    // One processor per instance, plus helpers that claim only while the
    // queue holds more than a full batch: under load the backlog gathers
    // into the next batch, so each transaction, NOTIFY and socket write
    // carries more (on two cores this sustained more ingest with live push,
    // at a lower push latency, than processors that all poll); a deep
    // backlog still gets every helper. Several instances share the queue
    // (SKIP LOCKED); a tenant's items commit in order through its event seq.
    let processors = std::env::var("SWITCHBOARD_WEBHOOK_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(2usize);
    for i in 0..processors.clamp(1, 16) {
        let state = state.clone();
        supervise("webhook processor", move || crate::inbox::processor::run(state.clone(), i == 0));
    }
    type Worker = fn(actix_web::web::Data<AppState>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;
    let workers: [(&'static str, Worker); 12] = [
        ("sender", |s| Box::pin(crate::inbox::sender::run(s))),
        ("profile lookups", |s| Box::pin(crate::inbox::sender::run_profiles(s))),
        ("media copies", |s| Box::pin(crate::inbox::media_copies::run(s))),
        ("snooze clock", |s| Box::pin(crate::inbox::sender::run_snooze_clock(s))),
        ("hand-out", |s| Box::pin(crate::inbox::hand_out::run(s))),
        ("event pruner", |s| Box::pin(crate::inbox::sender::run_event_pruner(s))),
        ("search index merges", |s| Box::pin(crate::inbox::search_index::run(s))),
        ("spare schemas", |s| Box::pin(crate::tenancy::spares::run(s))),
        ("integrations' webhooks", |s| Box::pin(crate::integrations::webhooks::run(s))),
        ("housekeeping", |s| Box::pin(crate::db::housekeeping::run(s))),
        ("erasure scrub", |s| Box::pin(crate::inbox::scrub::run(s))),
        ("mail", |s| Box::pin(crate::mail::run(s))),
    ];
    for (name, run) in workers {
        let state = state.clone();
        supervise(name, move || run(state.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// An item's panic comes back as its error, with what it said, and the
    /// work after it goes on.
    #[actix_web::test]
    async fn a_panic_in_one_item_comes_back_as_its_error() {
        assert_eq!(super::contained(async { 7 }).await, Ok(7));
        let mut outcomes = Vec::new();
        for n in 0..3 {
            outcomes.push(
                super::contained(async move {
                    match n {
                        1 => panic!("item {n} met a bug"),
                        2 => std::panic::panic_any(42u8),
                        _ => n,
                    }
                })
                .await,
            );
        }
        assert_eq!(outcomes, [Ok(0), Err("item 1 met a bug".to_string()), Err("a panic".to_string())]);
    }

    /// A worker that panics is started again a second later and takes up
    /// the queue it held where it left it; one that returns stays ended.
    #[actix_web::test]
    async fn a_panicking_worker_is_started_again_with_its_queue() {
        let (tx, rx) = tokio::sync::mpsc::channel::<u32>(8);
        let queue = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let restarts = || crate::metrics::WORKER_RESTARTS.load(Ordering::Relaxed);
        let before = restarts();
        let starts = std::rc::Rc::new(std::cell::Cell::new(0));
        let counted = starts.clone();
        super::supervise("test worker", move || {
            counted.set(counted.get() + 1);
            let (queue, seen_tx) = (queue.clone(), seen_tx.clone());
            async move {
                let mut rx = queue.lock_owned().await;
                while let Some(n) = rx.recv().await {
                    assert_ne!(n, 1, "a bug some input met");
                    let _ = seen_tx.send(n);
                    if n == 3 {
                        return;
                    }
                }
            }
        });
        for n in [1, 2] {
            tx.send(n).await.expect("queued");
        }
        let got = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await;
        assert_eq!(got, Ok(Some(2)), "the worker was not started again");
        assert_eq!(starts.get(), 2);
        assert!(restarts() > before);
        tx.send(3).await.expect("queued");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), seen.recv()).await, Ok(Some(3)));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(starts.get(), 2, "a worker that returned was started again");
    }
}
