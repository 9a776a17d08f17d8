//! The control plane's in-memory side: a snapshot of what the store holds (keys issued through
//! the admin API), kept current on every replica. The request path reads only the snapshot
//! (through `Auth`), never the store: a slow or unreachable database cannot stall or fail a
//! request, it only delays changes.
//!
//! Changes reach the replica that made them at once (it refreshes after its own write) and every
//! other replica at once on PostgreSQL (each write notifies `igw_changes`; every replica
//! LISTENs) and within `SYNC_INTERVAL` in any case: a background task polls the store's change
//! counter (one indexed row) and reloads when it moved, the safety net for a lost notification.
//! With SQLite, the old and new process of an upgrade share the file and see each other's
//! changes by the poll.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::auth::Auth;
use crate::config::auth::{BudgetPeriod, KeyConfig};
use crate::limits::Limiter;
use crate::store::catalog::Entry;
use crate::store::keys::StoredKey;
use crate::store::teams::StoredTeam;
use crate::store::{Store, StoreError};

/// How often every replica looks for changes.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(400);

pub struct ControlPlane {
    pub store: Store,
    /// Spend booked off the request path (`crate::ledger`).
    pub ledger: crate::ledger::Ledger,
    /// Requests' records, written off the request path (`None`: retention zero).
    pub requests: Option<crate::request_log::RequestLog>,
    auth: Arc<Auth>,
    limiter: Arc<Limiter>,
    teams: RwLock<Arc<Vec<StoredTeam>>>,
    /// Providers, models and backends (built into the router by `crate::catalog`).
    catalog: RwLock<Arc<Vec<Entry>>>,
    routing: Routing,
    /// Each budgeted key's spend in its current period, from the ledger at start (given to
    /// Redis by the sync service, which can wait for it).
    seeds: std::sync::Mutex<Vec<Seed>>,
    keys: RwLock<Arc<Vec<StoredKey>>>,
    version: AtomicI64,
    /// The last refresh failed (the store is unreachable): the snapshot is stale.
    pub stale: std::sync::atomic::AtomicBool,
    /// Another replica changed the store (PostgreSQL's notification): poll now.
    changed: tokio::sync::Notify,
}

/// Where the catalog is published: the router's and the pools' run-time layers.
pub struct Routing {
    pub router: Arc<crate::routing::Router>,
    pub pools: Arc<crate::pool::Pools>,
    pub retry: Option<crate::config::resilience::RetryConfig>,
    /// Pools built from unchanged entries are kept (their backends' health with them).
    built: std::sync::Mutex<BTreeMap<String, crate::catalog::Built>>,
}

impl Routing {
    pub fn new(
        router: Arc<crate::routing::Router>,
        pools: Arc<crate::pool::Pools>,
        retry: Option<crate::config::resilience::RetryConfig>,
    ) -> Routing {
        Routing {
            router,
            pools,
            retry,
            built: Default::default(),
        }
    }

    fn publish(&self, entries: &[Entry]) {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        crate::catalog::apply(
            entries,
            &self.router,
            &self.pools,
            self.retry.as_ref(),
            &mut built,
        );
    }
}

/// What start-up read from the store before serving.
pub struct Start {
    pub store: Store,
    pub keys: Vec<StoredKey>,
    pub teams: Vec<StoredTeam>,
    pub catalog: Vec<Entry>,
    pub version: i64,
    /// Budgeted principals' spend in their current period (the ledger is the source of truth:
    /// a restart does not forget it).
    pub seeds: Vec<Seed>,
}

#[derive(Debug, Clone)]
pub struct Seed {
    pub principal: String,
    pub period: BudgetPeriod,
    pub spend_micro: i64,
}

/// Principals with a budget: keys of the file and of the store (teams apart: their spend is
/// their keys').
fn budgeted(cfg_keys: &[KeyConfig], stored: &[StoredKey]) -> Vec<(String, BudgetPeriod)> {
    let file = cfg_keys
        .iter()
        .filter(|k| k.limits.budget_usd.is_some())
        .map(|k| (format!("key:{}", k.name), k.limits.budget_period));
    let store = stored
        .iter()
        .filter(|k| k.revoked_at.is_none() && k.spec.budget_usd.is_some())
        .map(|k| (format!("key:{}", k.name), k.spec.budget_period));
    file.chain(store).collect()
}

impl Start {
    /// Opens the store, applies migrations and reads the first snapshot. A short-lived pool does
    /// the start-up work (its connections belong to the runtime given); the one returned for
    /// serving connects lazily on the runtimes that use it.
    pub async fn open(url: &str, cfg_keys: &[KeyConfig]) -> Result<Start, String> {
        let boot = Store::connect_lazy(url)?;
        let loaded = async {
            boot.migrate().await?;
            let version = boot.version().await.map_err(|e| format!("store: {e}"))?;
            let keys = boot.keys().await.map_err(|e| format!("store: {e}"))?;
            let teams = boot.teams().await.map_err(|e| format!("store: {e}"))?;
            let catalog = boot.catalog().await.map_err(|e| format!("store: {e}"))?;
            let now = crate::store::now_ms() as u64 / 1000;
            let mut seeds = Vec::new();
            for (principal, period) in budgeted(cfg_keys, &keys) {
                let since = (crate::limits::period_start_secs(period, now) / 3600) as i64;
                let spend_micro = boot
                    .spend_since(&principal, since)
                    .await
                    .map_err(|e| format!("store: {e}"))?;
                if spend_micro > 0 {
                    seeds.push(Seed {
                        principal,
                        period,
                        spend_micro,
                    });
                }
            }
            for t in teams
                .iter()
                .filter(|t| t.deleted_at.is_none() && t.spec.budget_usd.is_some())
            {
                let period = t.spec.budget_period;
                let since = (crate::limits::period_start_secs(period, now) / 3600) as i64;
                let spend_micro = boot
                    .team_spend_since(&t.name, since)
                    .await
                    .map_err(|e| format!("store: {e}"))?;
                if spend_micro > 0 {
                    seeds.push(Seed {
                        principal: format!("team:{}", t.name),
                        period,
                        spend_micro,
                    });
                }
            }
            Ok::<_, String>((version, keys, teams, catalog, seeds))
        }
        .await;
        boot.close().await;
        let (version, keys, teams, catalog, seeds) = loaded?;
        Ok(Start {
            store: Store::connect_lazy(url)?,
            keys,
            teams,
            catalog,
            version,
            seeds,
        })
    }
}

impl ControlPlane {
    pub fn new(
        start: Start,
        auth: Arc<Auth>,
        limiter: Arc<Limiter>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
        routing: Routing,
        store_cfg: &crate::config::StoreConfig,
    ) -> ControlPlane {
        auth.set_store_keys(&start.keys, &start.teams);
        routing.publish(&start.catalog);
        // In this process's counters before the first request.
        for s in &start.seeds {
            limiter.seed_spend_local(&s.principal, s.period, s.spend_micro);
        }
        ControlPlane {
            store: start.store,
            requests: crate::request_log::RequestLog::new(store_cfg, metrics.clone()),
            ledger: crate::ledger::Ledger::new(metrics),
            auth,
            limiter,
            seeds: std::sync::Mutex::new(start.seeds),
            keys: RwLock::new(Arc::new(start.keys)),
            teams: RwLock::new(Arc::new(start.teams)),
            catalog: RwLock::new(Arc::new(start.catalog)),
            routing,
            version: AtomicI64::new(start.version),
            stale: Default::default(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// The keys the store held at the last refresh (revoked ones included).
    pub fn keys(&self) -> Arc<Vec<StoredKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What `/health?verbose` says about the store.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": match self.store.kind {
                crate::store::Kind::Sqlite => "sqlite",
                crate::store::Kind::Postgres => "postgres",
            },
            "reachable": !self.stale.load(Ordering::Relaxed),
            "ledger_rows_written": self.ledger.written.load(Ordering::Relaxed),
            "ledger_bookings_dropped": self.ledger.dropped.load(Ordering::Relaxed),
            "request_log_rows_written": self.requests.as_ref().map(|r| r.written.load(Ordering::Relaxed)),
            "request_log_rows_dropped": self.requests.as_ref().map(|r| r.dropped.load(Ordering::Relaxed)),
        })
    }

    /// The teams the store held at the last refresh (deleted ones included).
    pub fn teams(&self) -> Arc<Vec<StoredTeam>> {
        self.teams.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The catalog at the last refresh.
    pub fn catalog(&self) -> Arc<Vec<Entry>> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the snapshot from the store (after this replica's own write, or when the change
    /// counter moved).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let version = self.store.version().await?;
        let keys = self.store.keys().await?;
        let teams = self.store.teams().await?;
        let catalog = self.store.catalog().await?;
        self.auth.set_store_keys(&keys, &teams);
        self.routing.publish(&catalog);
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        *self.teams.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(teams);
        self.version.store(version, Ordering::Relaxed);
        Ok(())
    }

    /// One poll: reload when the counter moved.
    async fn poll(&self) -> Result<(), StoreError> {
        let v = self.store.version().await?;
        if v != self.version.load(Ordering::Relaxed) {
            self.refresh().await?;
        }
        Ok(())
    }
}

/// Keeps the snapshot current (a background service).
pub struct SyncService(pub Arc<ControlPlane>);

#[async_trait]
impl BackgroundService for SyncService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Redis's counters are seeded where absent (another replica may have them already).
        let seeds = std::mem::take(&mut *self.0.seeds.lock().unwrap_or_else(|e| e.into_inner()));
        for s in seeds {
            self.0
                .limiter
                .seed_spend_shared(&s.principal, s.period, s.spend_micro)
                .await;
        }
        // PostgreSQL tells every replica of a change at once (LISTEN); the poll stays as the
        // safety net (and is all SQLite has).
        let cp = self.0.clone();
        let listener = tokio::spawn(async move {
            let notify = cp.clone();
            cp.store
                .listen_for_changes(move || notify.changed.notify_one())
                .await;
        });
        let mut tick = tokio::time::interval(SYNC_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Expired caller state (stored responses) is removed now and then.
        let mut prune = tokio::time::interval(Duration::from_secs(600));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    listener.abort();
                    return;
                }
                _ = tick.tick() => {}
                _ = self.0.changed.notified() => {}
                _ = prune.tick() => {
                    match tokio::time::timeout(Duration::from_secs(30), self.0.store.prune_state()).await {
                        Ok(Ok(n)) if n > 0 => log::info!("control plane: removed {n} expired stored responses"),
                        Ok(Err(e)) => log::debug!("control plane: pruning state failed: {e}"),
                        _ => {}
                    }
                    continue;
                }
            }
            let r = tokio::time::timeout(Duration::from_secs(5), self.0.poll()).await;
            let failed = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some("timed out".to_string()),
            };
            let was_stale = self.0.stale.swap(failed.is_some(), Ordering::Relaxed);
            match failed {
                // Logged once per outage, not every tick.
                Some(e) if !was_stale => log::warn!(
                    "control plane: the store is unreachable ({e}); serving from the last snapshot"
                ),
                None if was_stale => log::info!("control plane: the store is reachable again"),
                _ => {}
            }
        }
    }
}
