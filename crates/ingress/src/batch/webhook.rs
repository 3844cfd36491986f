//! Completion webhooks: `POST <webhook_url>` with `{"type":"batch.<status>","data":<batch>}`,
//! signed so the receiver can check it came from Switchyard:
//!
//! - `x-switchyard-timestamp`: Unix seconds when it was signed;
//! - `x-switchyard-signature`: `sha256=` + hex HMAC-SHA256 over
//!   `"<timestamp>.<body>"` with `[batch] webhook_secret` (absent without a secret).
//!
//! A non-2xx answer or a failed connection is retried with exponential backoff
//! (0.5 s doubling to 30 s, 7 tries in all).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sy_protocol::batch::BatchObject;

/// The signature header's value for `body` signed at `timestamp`.
pub fn signature(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Calls the webhook until it answers 2xx or the retries run out; the outcome
/// (`delivered`, or the last error) for the batch record.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    batch: &BatchObject,
) -> String {
    let body = serde_json::to_vec(&serde_json::json!({
        "type": format!("batch.{}", batch.status.as_str()),
        "data": batch,
    }))
    .unwrap_or_default();
    let mut backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(6)
        .build();
    loop {
        let timestamp = super::now_secs();
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .header(
                "x-switchyard-event",
                format!("batch.{}", batch.status.as_str()),
            )
            .header("x-switchyard-timestamp", timestamp.to_string())
            .timeout(Duration::from_secs(10))
            .body(body.clone());
        if let Some(secret) = secret {
            req = req.header(
                "x-switchyard-signature",
                signature(secret, timestamp, &body),
            );
        }
        let outcome = match req.send().await {
            Ok(r) if r.status().is_success() => return "delivered".into(),
            Ok(r) => format!("HTTP {}", r.status().as_u16()),
            Err(e) => format!("{e}"),
        };
        match backoff.next() {
            Some(delay) => {
                tracing::debug!(batch = %batch.id, %outcome, ?delay, "Webhook failed; retrying.");
                tokio::time::sleep(delay).await;
            }
            None => {
                tracing::warn!(batch = %batch.id, %outcome, "Webhook failed; giving up.");
                return format!("failed: {outcome}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Known answer, computed with openssl:
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac s3cret
        let sig = signature("s3cret", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }
}
