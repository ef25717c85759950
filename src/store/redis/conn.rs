//! One connection handle over a single server or a cluster, reconnecting by itself,
//! with every call bounded in time so that a Redis outage answers 503 promptly instead
//! of holding requests.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, ScriptInvocation};

use crate::store::StoreError;

/// The longest any one store call may take before the caller is told the store is
/// unavailable.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Errors never include the URL: it may hold a password.
    pub async fn open(nodes: &[String], cluster: bool) -> Result<Self, String> {
        let connected = if cluster {
            let client = ClusterClientBuilder::new(nodes.to_vec())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(CALL_TIMEOUT)
                .retries(2)
                .build()
                .map_err(describe)?;
            client.get_async_connection().await.map(Conn::Cluster)
        } else {
            let url = nodes.first().ok_or("no Redis URL")?;
            let client = redis::Client::open(url.as_str()).map_err(describe)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(CALL_TIMEOUT)
                .set_number_of_retries(1)
                .set_max_delay(1_000);
            client
                .get_connection_manager_with_config(config)
                .await
                .map(Conn::Single)
        };
        connected.map_err(describe)
    }

    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let mut conn = self.clone();
        bounded(async move { cmd.query_async(&mut conn).await }).await
    }

    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.clone();
        bounded(async move { pipe.query_async(&mut conn).await }).await
    }

    pub async fn invoke<T: FromRedisValue>(
        &self,
        call: &mut ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.clone();
        bounded(async move { call.invoke_async(&mut conn).await }).await
    }
}

async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Err(_) => Err(no_answer()),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) if is_outage(&e) => Err(StoreError::Unavailable(describe(e))),
        Ok(Err(e)) => Err(StoreError::Internal(describe(e))),
    }
}

/// What a call that outlived CALL_TIMEOUT answers.
pub(super) fn no_answer() -> StoreError {
    StoreError::Unavailable(format!(
        "Redis did not answer within {} s",
        CALL_TIMEOUT.as_secs()
    ))
}

fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            redis::ErrorKind::BusyLoadingError
                | redis::ErrorKind::TryAgain
                | redis::ErrorKind::ClusterDown
                | redis::ErrorKind::MasterDown
                | redis::ErrorKind::ReadOnly
                | redis::ErrorKind::ClusterConnectionNotFound
        )
        // Out of memory, a script hogging the server, too few replicas: the server's
        // trouble, which passes.
        || matches!(
            e.code(),
            Some("OOM" | "BUSY" | "NOREPLICAS" | "MASTERDOWN" | "LOADING" | "MISCONF")
        )
}

/// The error's kind and text; redis-rs does not put credentials in either.
fn describe(e: redis::RedisError) -> String {
    e.to_string()
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
