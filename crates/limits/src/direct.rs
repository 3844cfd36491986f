//! The admission's own connections to Redis: the request's task writes its
//! command and reads the answer itself, on a connection it has taken from a
//! small pool, so an admission costs the round trip and nothing more.
//!
//! The multiplexed connection the rest of the crate uses hands every command
//! to a task of its own that owns the socket: two task wake-ups per call,
//! which on an idle two-core box cost more than Redis does (measured with
//! `sy-limits-bench`: a `PING` 78–83 µs p50 through it, 55 µs direct, with
//! the 0.7 ms gaps of one client at concurrency 1). Commands are encoded by
//! the `redis` crate and answers parsed by it; only the socket is ours.
//!
//! A connection goes back to the pool only after a whole answer was read: a
//! call that fails, times out or is abandoned (its request cancelled) drops
//! its connection, so no late answer is ever read by another call.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::LimitError;

/// Idle connections kept for later calls (more in flight at once are opened
/// and closed as needed).
const IDLE_KEPT: usize = 32;

/// Where the connections go.
#[derive(Debug, Clone)]
enum Addr {
    Tcp(String, u16),
    Unix(PathBuf),
}

/// A pool of plain connections to one Redis.
#[derive(Debug)]
pub(crate) struct Direct {
    addr: Addr,
    /// `AUTH` and `SELECT` sent on every new connection (packed), if any.
    hello: Vec<u8>,
    /// Answers `hello` expects (one per command).
    hello_answers: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

#[derive(Debug)]
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(bytes).await,
            Conn::Unix(s) => s.write_all(bytes).await,
        }
    }

    /// Reads `answers` whole answers into `buf`; the last one's value.
    async fn read_answers(&mut self, answers: usize) -> io::Result<Value> {
        match self {
            Conn::Tcp(s) => read_answers(s, answers).await,
            Conn::Unix(s) => read_answers(s, answers).await,
        }
    }
}

impl Direct {
    /// Direct connections to the Redis `info` names; none over TLS (those
    /// calls take the multiplexed connection).
    pub(crate) fn new(
        info: &ConnectionInfo,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Option<Direct> {
        let addr = match &info.addr {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            ConnectionAddr::TcpTls { .. } => return None,
        };
        let mut hello = Vec::new();
        let mut hello_answers = 0;
        if let Some(password) = &info.redis.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &info.redis.username {
                auth.arg(user);
            }
            hello.extend(auth.arg(password).get_packed_command());
            hello_answers += 1;
        }
        if info.redis.db != 0 {
            hello.extend(redis::cmd("SELECT").arg(info.redis.db).get_packed_command());
            hello_answers += 1;
        }
        Some(Direct {
            addr,
            hello,
            hello_answers,
            connect_timeout,
            response_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends one packed command and reads its answer (a server error is an
    /// `Err`, e.g. `NOSCRIPT`).
    ///
    /// A kept connection that turns out closed (Redis restarted, or closed
    /// it while idle) before a byte of the answer came is replaced by a new
    /// one and the command sent again: a Redis that ran a command answers
    /// before it closes, so nothing runs twice.
    pub(crate) async fn query(&self, packed: &[u8]) -> Result<Value, LimitError> {
        let kept = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let fresh = kept.is_none();
        let mut conn = match kept {
            Some(c) => c,
            None => self.connect().await?,
        };
        let value = match self.exchange(&mut conn, packed).await? {
            Ok(v) => v,
            Err(e) if fresh || !closed_before_answer(&e) => {
                return Err(LimitError(redis::RedisError::from(e)));
            }
            Err(_) => {
                conn = self.connect().await?;
                self.exchange(&mut conn, packed)
                    .await?
                    .map_err(redis::RedisError::from)?
            }
        };
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_KEPT
        {
            idle.push(conn);
        }
        Ok(value.extract_error()?)
    }

    async fn connect(&self) -> Result<Conn, LimitError> {
        tokio::time::timeout(self.connect_timeout, self.open())
            .await
            .map_err(|_| timed_out("connecting"))?
    }

    /// One command and its answer on `conn`, within the response timeout.
    async fn exchange(
        &self,
        conn: &mut Conn,
        packed: &[u8],
    ) -> Result<io::Result<Value>, LimitError> {
        tokio::time::timeout(self.response_timeout, async {
            conn.send(packed).await?;
            conn.read_answers(1).await
        })
        .await
        .map_err(|_| timed_out("waiting for an answer"))
    }

    async fn open(&self) -> Result<Conn, LimitError> {
        let mut conn = match &self.addr {
            Addr::Tcp(host, port) => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(redis::RedisError::from)?;
                s.set_nodelay(true).map_err(redis::RedisError::from)?;
                Conn::Tcp(s)
            }
            Addr::Unix(path) => Conn::Unix(
                UnixStream::connect(path)
                    .await
                    .map_err(redis::RedisError::from)?,
            ),
        };
        if self.hello_answers > 0 {
            conn.send(&self.hello)
                .await
                .map_err(redis::RedisError::from)?;
            for _ in 0..self.hello_answers {
                conn.read_answers(1)
                    .await
                    .map_err(redis::RedisError::from)?
                    .extract_error()?;
            }
        }
        Ok(conn)
    }
}

/// Whether `e` says the connection was gone before any of the answer came.
fn closed_before_answer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
    ) && e.get_ref().is_none_or(|inner| inner.to_string() != PARTIAL)
}

/// The message of an end of stream in the middle of an answer.
const PARTIAL: &str = "the connection closed in the middle of an answer";

fn timed_out(what: &str) -> LimitError {
    LimitError(redis::RedisError::from(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("redis: timed out {what}"),
    )))
}

/// Reads `answers` whole answers; the value of the last.
async fn read_answers<S: AsyncRead + Unpin>(s: &mut S, answers: usize) -> io::Result<Value> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let mut start = 0;
    let mut left = answers;
    loop {
        while left > 0 {
            match complete(&buf[start..]) {
                Some(len) if left == 1 => {
                    return redis::parse_redis_value(&buf[start..start + len])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
                Some(len) => {
                    start += len;
                    left -= 1;
                }
                None => break,
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, PARTIAL));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The length of the RESP value at the start of `buf`, once all of it is
/// there.
fn complete(buf: &[u8]) -> Option<usize> {
    let line_end = buf.windows(2).position(|w| w == b"\r\n")?;
    let head = buf.first()?;
    let number = || -> Option<i64> { std::str::from_utf8(&buf[1..line_end]).ok()?.parse().ok() };
    let after_line = line_end + 2;
    match head {
        b'$' | b'=' | b'!' => match number()? {
            n if n < 0 => Some(after_line),
            n => {
                let end = after_line + usize::try_from(n).ok()? + 2;
                (buf.len() >= end).then_some(end)
            }
        },
        b'*' | b'~' | b'>' | b'%' => {
            let n = number()?;
            let items = if *head == b'%' { n * 2 } else { n };
            let mut at = after_line;
            for _ in 0..items.max(0) {
                at += complete(&buf[at..])?;
            }
            Some(at)
        }
        _ => Some(after_line),
    }
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn an_answer_is_complete_only_when_all_of_it_is_there() {
        let whole = b"*3\r\n:1\r\n$5\r\nhello\r\n*2\r\n:-4\r\n+OK\r\n";
        for cut in 0..whole.len() {
            assert_eq!(complete(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(complete(whole), Some(whole.len()));
        let mut two = whole.to_vec();
        two.extend_from_slice(b":7\r\n");
        assert_eq!(complete(&two), Some(whole.len()));
        assert_eq!(complete(b"-NOSCRIPT No matching script\r\n"), Some(30));
        assert_eq!(complete(b"$-1\r\n"), Some(5));
        assert_eq!(complete(b"*-1\r\n"), Some(5));
        assert_eq!(complete(b"$3\r\nab"), None);
    }
}
