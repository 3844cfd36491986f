//! The admission's own connections to Redis: the request's task writes its
//! command and reads the answer itself, on a connection it has taken from a
//! small pool, so an admission costs the round trip and nothing more.
//!
//! The multiplexed connection the rest of the crate uses hands every command
//! to a task of its own that owns the socket: two task wake-ups per call,
//! which on an idle two-core box cost more than Redis does (measured with
//! `sy-limits-bench`: a `PING` 78–83 µs p50 through it, 55 µs direct, with
//! the 0.7 ms gaps of one client at concurrency 1). Commands are encoded by
//! the `redis` crate; the answers these calls get (integers, arrays of
//! integers, errors) are read here: the crate's general parser costs about
//! 19,000 instructions an answer (callgrind), this one a few hundred.
//!
//! A connection goes back to the pool only after a whole answer was read: a
//! call that fails, times out or is abandoned (its request cancelled) drops
//! its connection, so no late answer is ever read by another call.

use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo};
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

    /// Reads `answers` whole answers; their bytes.
    async fn read_answers(&mut self, answers: usize) -> io::Result<Vec<u8>> {
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

    /// Sends packed commands and reads their `answers`, returned as they
    /// came (see [`integers`] and [`first_error`]).
    ///
    /// A kept connection that turns out closed (Redis restarted, or closed
    /// it while idle) before a byte of the answer came is replaced by a new
    /// one and the command sent again: a Redis that ran a command answers
    /// before it closes, so nothing runs twice.
    pub(crate) async fn query(&self, packed: &[u8], answers: usize) -> Result<Vec<u8>, LimitError> {
        let kept = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
        let fresh = kept.is_none();
        let mut conn = match kept {
            Some(c) => c,
            None => self.connect().await?,
        };
        let value = match self.exchange(&mut conn, packed, answers).await? {
            Ok(v) => v,
            Err(e) if fresh || !closed_before_answer(&e) => {
                return Err(LimitError(redis::RedisError::from(e)));
            }
            Err(_) => {
                conn = self.connect().await?;
                self.exchange(&mut conn, packed, answers)
                    .await?
                    .map_err(redis::RedisError::from)?
            }
        };
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < IDLE_KEPT
        {
            idle.push(conn);
        }
        Ok(value)
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
        answers: usize,
    ) -> Result<io::Result<Vec<u8>>, LimitError> {
        tokio::time::timeout(self.response_timeout, async {
            conn.send(packed).await?;
            conn.read_answers(answers).await
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
            let answers = conn
                .read_answers(self.hello_answers)
                .await
                .map_err(redis::RedisError::from)?;
            if let Some(e) = first_error(&answers) {
                return Err(e);
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

/// Reads `answers` whole answers; their bytes.
async fn read_answers<S: AsyncRead + Unpin>(s: &mut S, answers: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let mut start = 0;
    let mut left = answers;
    loop {
        while left > 0 {
            match complete(&buf[start..]) {
                Some(len) => {
                    start += len;
                    left -= 1;
                }
                None => break,
            }
        }
        if left == 0 {
            return Ok(buf);
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

/// The error among `answers` (whole RESP answers), if one is: the first
/// error line at the top level.
pub(crate) fn first_error(answers: &[u8]) -> Option<LimitError> {
    let mut at = 0;
    while at < answers.len() {
        let len = complete(&answers[at..])?;
        if answers[at] == b'-' {
            return Some(server_error(&answers[at + 1..at + len - 2]));
        }
        at += len;
    }
    None
}

/// The integers of one answer: an integer or an array of them (an error
/// answer is its error; anything else is a protocol error).
pub(crate) fn integers(answer: &[u8]) -> Result<Vec<i64>, LimitError> {
    let bad = || {
        LimitError(redis::RedisError::from((
            redis::ErrorKind::TypeError,
            "unexpected answer from Redis",
        )))
    };
    let line = |at: usize| -> Option<(&[u8], usize)> {
        let end = at + answer.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&answer[at..end], end + 2))
    };
    let number = |text: &[u8]| -> Option<i64> { std::str::from_utf8(text).ok()?.parse().ok() };
    let (head, next) = line(0).ok_or_else(bad)?;
    match head.first() {
        Some(b'-') => Err(server_error(&head[1..])),
        Some(b':') => Ok(vec![number(&head[1..]).ok_or_else(bad)?]),
        Some(b'*') => {
            let n = usize::try_from(number(&head[1..]).ok_or_else(bad)?).unwrap_or(0);
            let mut out = Vec::with_capacity(n);
            let mut at = next;
            for _ in 0..n {
                let (item, after) = line(at).ok_or_else(bad)?;
                match item.split_first() {
                    Some((b':', digits)) => out.push(number(digits).ok_or_else(bad)?),
                    _ => return Err(bad()),
                }
                at = after;
            }
            Ok(out)
        }
        _ => Err(bad()),
    }
}

/// An error line's text (after its `-`) as the error it names.
fn server_error(text: &[u8]) -> LimitError {
    let text = String::from_utf8_lossy(text).into_owned();
    let kind = match text.split(' ').next() {
        Some("NOSCRIPT") => redis::ErrorKind::NoScriptError,
        Some("BUSY") => redis::ErrorKind::BusyLoadingError,
        _ => redis::ErrorKind::ResponseError,
    };
    LimitError(redis::RedisError::from((kind, "Redis refused", text)))
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
    use super::{complete, first_error, integers};

    #[test]
    fn answers_are_read_as_integers_or_as_the_error_they_are() {
        assert_eq!(
            integers(b"*3\r\n:1\r\n:-7\r\n:0\r\n").unwrap(),
            vec![1, -7, 0]
        );
        assert_eq!(integers(b":42\r\n").unwrap(), vec![42]);
        assert_eq!(integers(b"*0\r\n").unwrap(), Vec::<i64>::new());
        let e = integers(b"-NOSCRIPT No matching script. Please use EVAL.\r\n").unwrap_err();
        assert_eq!(e.0.kind(), redis::ErrorKind::NoScriptError);
        let e = integers(b"-ERR wrong number of arguments\r\n").unwrap_err();
        assert_eq!(e.0.kind(), redis::ErrorKind::ResponseError);
        assert!(e.to_string().contains("wrong number of arguments"), "{e}");
        assert!(integers(b"+OK\r\n").is_err());
        assert!(integers(b"*2\r\n:1\r\n$1\r\nx\r\n").is_err());
        assert!(first_error(b":1\r\n:0\r\n").is_none());
        let e = first_error(b":1\r\n-WRONGTYPE Operation against a key\r\n").unwrap();
        assert!(e.to_string().contains("WRONGTYPE"), "{e}");
    }

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
