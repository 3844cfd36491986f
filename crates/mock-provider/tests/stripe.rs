//! The Stripe-like mock: Checkout Sessions as Stripe's API takes them
//! (secret key, form body, idempotency), and a paid session delivered to a
//! webhook signed as Stripe signs it.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use serde_json::Value;
use sy_mock_provider::{MockOptions, MockProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORM: &str = "mode=payment&client_reference_id=ord_1&success_url=http%3A%2F%2Fx%2Fok\
    &line_items[0][price_data][currency]=USD&line_items[0][price_data][unit_amount]=1000\
    &line_items[0][price_data][product_data][name]=Top-up&line_items[0][quantity]=1\
    &metadata[order_id]=ord_1";

async fn create(mock: &MockProvider, key: &str, idem: &str, form: &str) -> (u16, Value) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/checkout/sessions", mock.addr()))
        .bearer_auth(key)
        .header("idempotency-key", idem)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn sessions_are_made_once_per_idempotency_key_and_paid_to_a_signed_webhook() {
    let mock = MockProvider::start(MockOptions::new("stripe"))
        .await
        .unwrap();
    let (status, v) = create(&mock, "nope", "k1", FORM).await;
    assert_eq!(status, 401, "{v}");
    let (status, first) = create(&mock, "sk_test_1", "k1", FORM).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["client_reference_id"], "ord_1");
    assert_eq!(
        (first["amount_total"].as_i64(), first["currency"].as_str()),
        (Some(1000), Some("usd"))
    );
    assert_eq!(first["metadata"]["order_id"], "ord_1");
    let (_, again) = create(&mock, "sk_test_1", "k1", FORM).await;
    assert_eq!(again["id"], first["id"], "the same key, the same session");
    let (status, v) = create(&mock, "sk_test_1", "k1", &FORM.replace("1000", "2000")).await;
    assert_eq!(status, 400, "{v}");
    let (_, other) = create(&mock, "sk_test_1", "k2", FORM).await;
    assert_ne!(other["id"], first["id"]);

    // Paying delivers checkout.session.completed, signed with the secret.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hook.local_addr().unwrap().port();
    let received = tokio::spawn(async move {
        let (mut tcp, _) = hook.accept().await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap();
                if body.len() >= len {
                    tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    let signature = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Stripe-Signature: ").map(str::to_owned))
                        .unwrap();
                    return (signature, body.to_owned());
                }
            }
        }
    });
    let url = first["url"].as_str().unwrap();
    let paid: Value = reqwest::Client::new()
        .post(format!(
            "{url}?webhook=http://127.0.0.1:{port}/webhooks/stripe&secret=whsec_mock_secret_000"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paid["webhook_status"], 200, "{paid}");
    let (signature, body) = received.await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sy_billing::stripe::verify(
        &signature,
        body.as_bytes(),
        &["whsec_mock_secret_000"],
        now,
        300,
    )
    .unwrap();
    let event = sy_billing::stripe::parse_event(body.as_bytes()).unwrap();
    assert_eq!(
        event,
        sy_billing::PaymentEvent::Paid {
            event_id: paid["event"].as_str().unwrap().to_owned(),
            order_id: "ord_1".into(),
            amount: 1000,
            currency: "usd".into(),
            payment: "pi_test_1".into(),
        }
    );
}
