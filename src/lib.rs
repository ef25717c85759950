//! otpd: a self-hosted one-time-password service. `App::start` builds the store, the
//! domain service, the HTTP server and the background workers from a `Config`; `main`
//! and the integration tests both use it.

pub mod bot;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod http;
pub mod logs;
pub mod metrics;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError, StoreUrl, UpdatesMode, secret_value};
use crate::delivery::{
    BotApi, ConsoleOut, DeliverySettings, Dispatch, Worker, build_chains, count_ended_by_store,
};
use crate::domain::link::{LinkSettings, TelegramLink};
use crate::domain::phone_policy::PhonePolicy;
use crate::domain::secret::Secret;
use crate::domain::service::{CodeSettings, OtpService};
use crate::metrics::Metrics;
use crate::store::{RedisStore, SharedStore, SqliteStore, StoreError, TimedStore};

const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// What the process takes from its surroundings; tests replace these.
#[derive(Clone)]
pub struct Deps {
    pub clock: Arc<dyn Clock>,
    pub console: ConsoleOut,
}

impl Default for Deps {
    fn default() -> Self {
        Deps {
            clock: Arc::new(SystemClock),
            console: ConsoleOut::stdout(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("OTP_STORE: {0}")]
    Store(#[from] store::OpenError),
    #[error("OTP_STORE: {0}")]
    Redis(#[from] store::RedisOpenError),
    #[error("OTP_SECRET: {0}")]
    Secret(#[from] domain::secret::SecretError),
    #[error("OTP_LISTEN: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running otpd: the server, the delivery worker and the purger.
pub struct App {
    addr: SocketAddr,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl App {
    pub async fn start(config: Config, deps: Deps) -> Result<App, StartError> {
        config.validate()?;
        // Opened first: SQLite creates the data directory the generated secret is kept in.
        let metrics = Arc::new(Metrics::default());
        let store: SharedStore = match &config.store {
            StoreUrl::Sqlite(path) => Arc::new(SqliteStore::open(path)?),
            StoreUrl::Redis(url) => Arc::new(
                RedisStore::open(std::slice::from_ref(url), false, &config.redis_prefix).await?,
            ),
            StoreUrl::RedisCluster(nodes) => {
                Arc::new(RedisStore::open(nodes, true, &config.redis_prefix).await?)
            }
        };
        let store = TimedStore::wrap(store, metrics.clone());
        let secret = match secret_value(
            &config.secret,
            &config.secret_file,
            "OTP_SECRET",
            "OTP_SECRET_FILE",
        )? {
            Some(s) => Secret::new(s.0.as_bytes())?,
            None => match &config.store {
                StoreUrl::Sqlite(path) => {
                    Secret::load_or_create(&path.with_file_name("otpd.secret"))?
                }
                // validate() refused this already: replicas must share one secret.
                _ => {
                    return Err(StartError::Config(ConfigError::new(
                        "OTP_SECRET",
                        "must be set with a Redis store",
                    )));
                }
            },
        };
        // Built before binding: a provider missing a setting stops the start here.
        let secret = Arc::new(secret);
        let chains = build_chains(&config, &deps.console)?;
        // The webhook is served only for a configured bot: an open endpoint that makes
        // codes and messages for anyone who posts to it is not a default.
        let has_token = config.delivery.telegram_bot_token()?.is_some();
        let mode = match config.bot.telegram_updates {
            UpdatesMode::Webhook if !has_token => UpdatesMode::Off,
            mode => mode,
        };
        let webhook = http::WebhookSettings {
            mode,
            secret: config.bot.webhook_secret()?,
        };
        // Needed before binding, so that a missing token stops the start.
        let poller = match webhook.mode {
            UpdatesMode::Polling => Some(BotApi::standalone(
                &config.delivery,
                "when TELEGRAM_UPDATES=polling",
            )?),
            _ => None,
        };
        let tls = match config.tls_files() {
            Some((cert, key)) => Some(
                http::tls::server_config(cert, key)
                    .map_err(|(variable, reason)| ConfigError::new(variable, reason))?,
            ),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;

        let delivery = DeliverySettings {
            concurrency: usize::from(config.delivery_workers),
            lease: config.delivery_lease(),
            provider_timeout: config.delivery.timeout(),
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(2),
            retry_cap: Duration::from_secs(120),
        };
        let dispatch = Arc::new(Dispatch::new(delivery.concurrency, delivery.lease));
        let settings = CodeSettings {
            code_length: config.code_length,
            default_lifetime: Duration::from_secs(config.default_lifetime),
            max_lifetime: Duration::from_secs(config.max_lifetime),
            max_active: config.max_active_codes,
            max_attempts: config.max_attempts,
        };
        let abuse = config.abuse.settings()?;
        // Finished before the server answers anything, /health included: started in the
        // background, it was still loading (~100 ms) when the first requests came, and
        // they and every request behind them waited for it (BENCHMARKS.md, finding 36).
        if let Err(e) = tokio::task::spawn_blocking(PhonePolicy::warm_up).await {
            tracing::warn!(error = %e, "cannot load the phone number metadata ahead of the first request");
        }
        if !abuse.test_targets.is_empty() {
            tracing::warn!(
                count = abuse.test_targets.len(),
                "OTP_TEST_TARGETS is set: those targets accept a fixed code with no limit"
            );
        }
        let otp = Arc::new(OtpService::new(
            store.clone(),
            deps.clock.clone(),
            secret.clone(),
            settings,
            abuse,
            dispatch.clone(),
            metrics.clone(),
        ));
        let link = Arc::new(
            TelegramLink::new(
                store.clone(),
                deps.clock.clone(),
                secret,
                LinkSettings {
                    code_length: config.bot.telegram_code_length,
                    lifetime: config.bot.lifetime(),
                    template: config.bot.telegram_template.clone(),
                    failures_per_10_minutes: config.bot.target_failures,
                },
                dispatch.clone(),
                metrics.clone(),
            )
            .map_err(|reason| ConfigError::new("OTP_TARGET_FAILURES", reason))?,
        );
        if webhook.mode == UpdatesMode::Webhook && webhook.secret.is_none() {
            tracing::warn!(
                basic_auth = config.basic_auth().is_some(),
                "TELEGRAM_WEBHOOK_SECRET is not set: anyone who can reach POST /telegram/webhook \
                 (which Basic auth does not cover) can make the bot send codes"
            );
        }
        let auth = config
            .basic_auth()
            .map(|(user, pass)| http::BasicAuth::new(user, pass));
        let state = http::AppState::new(http::Services {
            otp,
            link: link.clone(),
            webhook: Arc::new(webhook),
            store: store.clone(),
            metrics: metrics.clone(),
            clock: deps.clock.clone(),
        });
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some((
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
                http::metrics_router(state.clone()),
            )),
            None => None,
        };
        let router = http::router(state, auth);

        let (shutdown, _) = watch::channel(false);
        let server = match &tls {
            Some(config) => {
                let listener = http::tls::TlsListener::new(listener, config.clone())
                    .map_err(|source| StartError::Listen { addr, source })?;
                tokio::spawn(serve(listener, router, shutdown.subscribe()))
            }
            None => tokio::spawn(serve(listener, router, shutdown.subscribe())),
        };

        let mut background = Vec::new();
        if let Some((listener, router)) = metrics_listener {
            let mut stop = shutdown.subscribe();
            background.push(tokio::spawn(async move {
                let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            }));
        }
        if delivery.concurrency > 0 {
            let worker = Arc::new(Worker::new(
                store.clone(),
                chains,
                deps.clock.clone(),
                delivery,
                dispatch,
                metrics.clone(),
            ));
            background.extend(worker.spawn(&shutdown.subscribe()));
        }
        if let Some(api) = poller {
            background.push(tokio::spawn(bot::polling::run(
                api,
                link,
                shutdown.subscribe(),
            )));
        }
        background.push(tokio::spawn(purge_loop(
            store.clone(),
            deps.clock.clone(),
            metrics.clone(),
            config.purge_interval(),
            shutdown.subscribe(),
        )));
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, scheme, store = %config.store.describe(), "otpd is serving");
        Ok(App {
            addr,
            store,
            clock: deps.clock,
            metrics,
            shutdown,
            server,
            background,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// One sweep of what the background purger does every `OTP_PURGE_INTERVAL`.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let (purged, ended) = self.store.purge_expired(self.clock.now()).await?;
        count_ended_by_store(&self.metrics, &ended);
        Ok(purged)
    }

    /// Stops accepting, lets in-flight requests and deliveries finish (for at most
    /// `SHUTDOWN_GRACE`, so a stalled client cannot hold the process), then closes the store.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server)
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the grace period; closing them");
            self.server.abort();
        }
        // Bounded like the server: a stalled scrape or provider cannot hold the process.
        for mut task in self.background {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        self.store.close().await;
        tracing::info!("otpd stopped");
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets requests in flight
/// finish.
async fn serve<L>(listener: L, router: axum::Router, mut stop: watch::Receiver<bool>)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    http::PeerAddr:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let service = router.into_make_service_with_connect_info::<http::PeerAddr>();
    let serve = axum::serve(listener, service).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    if let Err(e) = serve.await {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

async fn purge_loop(
    store: SharedStore,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match store.purge_expired(clock.now()).await {
            Ok((removed, ended)) => {
                count_ended_by_store(&metrics, &ended);
                if removed > 0 {
                    tracing::debug!(removed, "purged expired state");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot purge expired state"),
        }
    }
}
