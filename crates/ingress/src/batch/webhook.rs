//! Completion webhooks: `POST <webhook_url>` with `{"type":"batch.<status>","data":<batch>}`,
//! signed so the receiver can check it came from Switchyard:
//!
//! - `x-switchyard-timestamp`: Unix seconds when it was signed;
//! - `x-switchyard-signature`: `sha256=` + hex HMAC-SHA256 over
//!   `"<timestamp>.<body>"` with `[batch] webhook_secret` (absent without a secret).
//!
//! A webhook is a request the server makes on a client's behalf, so it must not
//! reach what the client cannot: [`check_url`] refuses, when the batch is
//! created, URLs longer than [`MAX_URL_LEN`], other schemes, credentials, and
//! hosts that are internal addresses or `localhost` names; at delivery the host
//! name is resolved and refused if any address is internal ([`internal`]:
//! loopback, private, link-local and the metadata services on it, shared,
//! unspecified, multicast, reserved, and IPv6 forms embedding those), and the
//! connection is pinned to the address that was checked (no second lookup to
//! rebind), with no proxy and no redirects. `[batch] webhook_allow` names
//! networks a deployment wants reachable anyway.
//!
//! A non-2xx answer or a failed connection is retried with exponential backoff
//! (0.5 s doubling to 30 s, 7 tries in all); a refused destination or a
//! redirect is final. The outcome is on the batch object (`webhook`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::Sha256;
use sy_protocol::batch::{BatchObject, WebhookDelivery, WebhookStatus};

/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Checks a webhook URL when its batch is created: `http(s)`, at most
/// [`MAX_URL_LEN`] bytes, no credentials, and a host that is not an internal
/// address (unless allowed) nor a `localhost` name. Names are checked again,
/// resolved, at delivery.
pub fn check_url(url: &str, allow: &[IpNet]) -> Result<url::Url, String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!(
            "webhook_url is {} bytes long; at most {MAX_URL_LEN} are accepted.",
            url.len()
        ));
    }
    let shown = || sy_protocol::bounded(url, 128);
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| format!("webhook_url '{}' is not an http(s) URL.", shown()))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "webhook_url must not carry credentials; sign with [batch] webhook_secret instead."
                .into(),
        );
    }
    match parsed.host() {
        None => Err(format!("webhook_url '{}' names no host.", shown())),
        Some(url::Host::Ipv4(ip)) => reachable(IpAddr::V4(ip), allow).map(|()| parsed),
        Some(url::Host::Ipv6(ip)) => reachable(IpAddr::V6(ip), allow).map(|()| parsed),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Err(format!(
                    "webhook_url host '{name}' is this machine; webhooks reach only public addresses."
                ))
            } else {
                Ok(parsed)
            }
        }
    }
}

/// Refuses `ip` when it is internal and no allowed network holds it.
fn reachable(ip: IpAddr, allow: &[IpNet]) -> Result<(), String> {
    match internal(ip) {
        Some(kind) if !allow.iter().any(|n| n.contains(&ip)) => Err(format!(
            "webhook_url reaches {ip}, a {kind} address; webhooks reach only public addresses (see [batch] webhook_allow)."
        )),
        _ => Ok(()),
    }
}

/// What kind of internal address `ip` is, or `None` for a public one.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => {
            // Forms that carry an IPv4 address: mapped, compatible, NAT64, 6to4.
            let s = v6.segments();
            let embedded = if let Some(v4) = v6.to_ipv4_mapped() {
                Some(v4)
            } else if (s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified())
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
            {
                // IPv4-compatible, or NAT64's well-known prefix.
                Some(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32))
            } else if s[0] == 0x2002 {
                Some(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32))
            } else {
                None
            };
            if let Some(kind) = embedded.and_then(internal_v4) {
                return Some(kind);
            }
            internal_v6(v6)
        }
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        // 169.254.169.254: the cloud metadata services.
        "link-local"
    } else if a == 100 && (64..128).contains(&b) {
        // Carrier-grade NAT; 100.100.100.200 is a metadata service too.
        "shared"
    } else if a == 192 && b == 0 && ip.octets()[2] == 0 {
        "protocol-assignment"
    } else if a == 198 && (b == 18 || b == 19) {
        "benchmarking"
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        "multicast or reserved"
    } else if ip.is_documentation() {
        "documentation"
    } else {
        return None;
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s0 = ip.segments()[0];
    Some(if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if s0 & 0xfe00 == 0xfc00 {
        // Unique local (fd00:ec2::254 is a metadata service).
        "private"
    } else if s0 & 0xffc0 == 0xfe80 || s0 & 0xffc0 == 0xfec0 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast or reserved"
    } else if s0 == 0x2001 && ip.segments()[1] == 0x0db8 {
        "documentation"
    } else if ip.segments()[..6] == [0x64, 0xff9b, 1, 0, 0, 0] || s0 == 0x0100 {
        "reserved"
    } else {
        return None;
    })
}

/// The address to call for `url`: its host resolved, every address checked.
async fn destination(url: &url::Url, allow: &[IpNet]) -> Result<SocketAddr, String> {
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match url.host() {
        None => return Err("no host".into()),
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("resolving {name}: {e}"))?
            .collect(),
    };
    // Every address must be reachable: a name that resolves to a public and a
    // private address could otherwise be steered to the private one.
    for a in &addrs {
        reachable(a.ip(), allow)?;
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| "the host resolves to no address".into())
}

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

/// Calls the webhook until it answers 2xx, the retries run out, or the
/// destination is refused; what happened, for the batch object.
pub async fn deliver(
    url: &str,
    allow: &[IpNet],
    secret: Option<&str>,
    batch: &BatchObject,
) -> WebhookDelivery {
    let mut delivery = WebhookDelivery {
        status: WebhookStatus::Pending,
        attempts: 0,
        last_error: None,
        at: None,
    };
    let end = |mut d: WebhookDelivery, status, error: Option<String>| {
        d.status = status;
        d.last_error = error.map(|e| sy_protocol::bounded(&e, 512).into_owned());
        d.at = Some(super::now_secs());
        if status != WebhookStatus::Delivered {
            tracing::warn!(batch = %batch.id, status = status.as_str(), error = d.last_error.as_deref().unwrap_or(""), attempts = d.attempts, "Webhook not delivered.");
        }
        d
    };
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
        // Checked again on every try: the URL was checked when the batch was
        // made, but a name may resolve elsewhere now.
        let checked = check_url(url, allow);
        let target = match &checked {
            Ok(u) => destination(u, allow).await.map(|a| (u, a)),
            Err(e) => Err(e.clone()),
        };
        let (parsed, addr) = match target {
            Ok(t) => t,
            Err(e) if e.starts_with("resolving") => {
                // DNS failures are worth another try.
                delivery.attempts += 1;
                match backoff.next() {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    None => return end(delivery, WebhookStatus::Failed, Some(e)),
                }
            }
            Err(e) => return end(delivery, WebhookStatus::Refused, Some(e)),
        };
        delivery.attempts += 1;
        let timestamp = super::now_secs();
        let mut client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10));
        if let Some(url::Host::Domain(name)) = parsed.host() {
            // Connect to the address just checked, not to a second lookup.
            client = client.resolve(name, addr);
        }
        let client = match client.build() {
            Ok(c) => c,
            Err(e) => return end(delivery, WebhookStatus::Failed, Some(e.to_string())),
        };
        let mut req = client
            .post(parsed.clone())
            .header("content-type", "application/json")
            .header(
                "x-switchyard-event",
                format!("batch.{}", batch.status.as_str()),
            )
            .header("x-switchyard-timestamp", timestamp.to_string())
            .body(body.clone());
        if let Some(secret) = secret {
            req = req.header(
                "x-switchyard-signature",
                signature(secret, timestamp, &body),
            );
        }
        let outcome = match req.send().await {
            Ok(r) if r.status().is_success() => {
                return end(delivery, WebhookStatus::Delivered, None);
            }
            Ok(r) if r.status().is_redirection() => {
                let error = format!(
                    "HTTP {}: redirects are not followed; give the final URL",
                    r.status().as_u16()
                );
                return end(delivery, WebhookStatus::Failed, Some(error));
            }
            Ok(r) => format!("HTTP {}", r.status().as_u16()),
            Err(e) => format!("{e}"),
        };
        match backoff.next() {
            Some(delay) => {
                tracing::debug!(batch = %batch.id, %outcome, ?delay, "Webhook failed; retrying.");
                tokio::time::sleep(delay).await;
            }
            None => return end(delivery, WebhookStatus::Failed, Some(outcome)),
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

    #[test]
    fn internal_addresses_in_every_spelling_are_refused() {
        let internal_ones = [
            "127.0.0.1",
            "127.8.9.10",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a9fe:a9fe::1",
            "ff02::1",
        ];
        for ip in internal_ones {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(internal(ip).is_some(), "{ip} is internal");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "172.32.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(internal(ip), None, "{ip} is public");
        }
    }

    #[test]
    fn urls_are_checked_before_any_call() {
        let none: &[IpNet] = &[];
        for bad in [
            "ftp://example.com/hook",
            "not a url",
            "http://user:pw@example.com/hook",
            "http://localhost:8084/mock/reset",
            "http://LOCALHOST./x",
            "http://api.localhost/x",
            "http://127.0.0.1:8084/mock/reset",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/",
        ] {
            assert!(check_url(bad, none).is_err(), "{bad} refused");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        let e = check_url(&long, none).unwrap_err();
        assert!(e.contains("2048"), "{e}");
        assert!(check_url("https://hooks.example.com/batch?x=1", none).is_ok());
        let allow: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
        assert!(check_url("http://10.1.2.3:9000/hook", &allow).is_ok());
        assert!(check_url("http://10.2.0.1/hook", &allow).is_err());
    }
}
