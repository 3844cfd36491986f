//! The response cache's entries in Redis (the ingress decides what is
//! stored and derives the keys; docs/cache.md): a `GET` on a lookup, a
//! `SET … PX` on a store, each one round trip. Like an admission, a lookup
//! alone takes one of the direct connections (no task hand-off, its answer
//! read without the `redis` crate's general parser: the least latency);
//! while other calls wait it joins them on the multiplexed connection (the
//! least CPU under load). A store is off the request path: always the
//! multiplexed connection.

use crate::{LimitError, Limiter, Waiting};

/// Every entry's key starts with this.
pub const PREFIX: &str = "cache:";

impl Limiter {
    /// The value stored at `key` (a full key, [`PREFIX`] included), if any.
    pub async fn cache_get(&self, key: &str) -> Result<Option<Vec<u8>>, LimitError> {
        let waiting = Waiting::enter(&self.waiting);
        if let Some(d) = self.direct.as_ref().filter(|_| waiting.alone) {
            let packed = redis::cmd("GET").arg(key).get_packed_command();
            let answer = d.query(&packed, 1).await?;
            return bulk(&answer);
        }
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

/// A `GET`'s answer: a bulk string (the value), a null (none), or an error.
fn bulk(answer: &[u8]) -> Result<Option<Vec<u8>>, LimitError> {
    if let Some(e) = crate::direct::first_error(answer) {
        return Err(e);
    }
    let bad = || {
        LimitError(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "unexpected answer from Redis to GET",
        )))
    };
    let line_end = answer
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or_else(bad)?;
    match answer.first() {
        // RESP3's null.
        Some(b'_') => Ok(None),
        Some(b'$') => {
            let n: i64 = std::str::from_utf8(&answer[1..line_end])
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(bad)?;
            if n < 0 {
                return Ok(None);
            }
            let start = line_end + 2;
            let end = start + usize::try_from(n).map_err(|_| bad())?;
            answer
                .get(start..end)
                .map(|v| Some(v.to_vec()))
                .ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::bulk;

    #[test]
    fn a_gets_answer_is_its_value_none_or_its_error() {
        assert_eq!(bulk(b"$5\r\nhello\r\n").unwrap(), Some(b"hello".to_vec()));
        assert_eq!(bulk(b"$0\r\n\r\n").unwrap(), Some(Vec::new()));
        assert_eq!(
            bulk(b"$6\r\nhe\r\nlo\r\n").unwrap(),
            Some(b"he\r\nlo".to_vec()),
            "a value may hold CRLF"
        );
        assert_eq!(bulk(b"$-1\r\n").unwrap(), None);
        assert_eq!(bulk(b"_\r\n").unwrap(), None);
        assert!(bulk(b"-WRONGTYPE Operation against a key\r\n").is_err());
        assert!(bulk(b":1\r\n").is_err());
        assert!(bulk(b"$9\r\nshort\r\n").is_err());
    }
}
