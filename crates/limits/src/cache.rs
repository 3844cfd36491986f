//! The response cache's entries in Redis (the ingress decides what is
//! stored and derives the keys; docs/cache.md): a `GET` on a lookup, a
//! `SET … PX` on a store, each one round trip on the limiter's connection.

use crate::{LimitError, Limiter};

/// Every entry's key starts with this.
pub const PREFIX: &str = "cache:";

impl Limiter {
    /// The value stored at `key` (a full key, [`PREFIX`] included), if any.
    pub async fn cache_get(&self, key: &str) -> Result<Option<Vec<u8>>, LimitError> {
        Ok(redis::cmd("GET")
            .arg(key)
            .query_async::<Option<Vec<u8>>>(&mut self.conn.clone())
            .await?)
    }

    /// Stores `value` at `key` for `ttl_ms`, replacing what was there.
    pub async fn cache_put(&self, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), LimitError> {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}
