use async_nats::jetstream::context::{PublishError, PublishErrorKind};

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The first connection failed.
    #[error("cannot connect to NATS at {url}")]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        #[source]
        source: Box<async_nats::ConnectError>,
    },
    /// A `[nats] url` that names no server.
    #[error("not a NATS server URL: {url}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The connection is down, or JetStream did not confirm in time.
    #[error("NATS is unavailable")]
    Unavailable,
    /// The message is larger than the server's `max_payload`.
    #[error("message is larger than the NATS server accepts")]
    PayloadTooLarge,
    /// No stream listens on the subject (deleted, or the server lost its state).
    #[error("no JetStream stream for the subject")]
    NoStream,
    /// A publish failed for another reason.
    #[error("publish failed: {0}")]
    Publish(String),
    /// Creating a stream or consumer failed.
    #[error("JetStream setup failed: {0}")]
    Setup(String),
    /// A subject or key that the bus refuses to send (too long, or with
    /// characters NATS would misread); nothing was sent.
    #[error("refusing to publish on an invalid subject ({len} bytes)")]
    BadSubject {
        /// Its length.
        len: usize,
    },
    /// A message could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] serde_json::Error),
}

impl BusError {
    /// `Ok` for a subject the bus may publish to ([`sy_protocol::is_valid_subject`]).
    pub fn check_subject(subject: &str) -> Result<(), BusError> {
        if sy_protocol::is_valid_subject(subject) {
            Ok(())
        } else {
            Err(BusError::BadSubject { len: subject.len() })
        }
    }

    pub(crate) fn from_publish(e: PublishError) -> BusError {
        match e.kind() {
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => BusError::Unavailable,
            PublishErrorKind::MaxPayloadExceeded => BusError::PayloadTooLarge,
            PublishErrorKind::StreamNotFound => BusError::NoStream,
            _ => BusError::Publish(e.to_string()),
        }
    }
}
