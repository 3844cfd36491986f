//! The reply relay against real NATS: lost frames, a silent worker and a reader
//! too slow to keep up each end the request with an error and a cancel.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use sy_bus::{Bus, ReplyRouter};
use sy_config::{Config, MapEnv};
use sy_ingress::Pending;
use sy_protocol::{Cancel, CancelReason, ChunkFrame, ErrorCode, ReplyFrame};
use tokio::time::Instant;
use uuid::Uuid;

async fn bus() -> Bus {
    let ns = sy_test_support::unique_namespace();
    let config = Config::from_toml(
        &format!(
            "[nats]\nurl = \"{}\"\nnamespace = \"{ns}\"\n",
            sy_test_support::nats_url()
        ),
        &MapEnv::default(),
    )
    .unwrap();
    Bus::from_client(sy_test_support::nats().await, &config.nats)
}

fn chunk(seq: u32) -> ReplyFrame {
    ReplyFrame::Chunk(ChunkFrame {
        seq,
        start: None,
        choices: vec![],
    })
}

async fn cancel_of(sub: &mut async_nats::Subscriber) -> Cancel {
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("no cancel was published")
        .unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

#[tokio::test]
async fn a_gap_in_sequence_numbers_ends_the_request_and_cancels_it() {
    let bus = bus().await;
    let router = ReplyRouter::start(bus.client(), bus.subjects(), "ing")
        .await
        .unwrap();
    let id = Uuid::now_v7();
    let mut cancels = bus
        .client()
        .subscribe(bus.subjects().cancel(id))
        .await
        .unwrap();
    let mut pending = Pending::new(
        router.register(id, 16),
        bus.clone(),
        Instant::now() + Duration::from_secs(5),
    );
    let reply = bus.subjects().reply("ing", id);
    bus.publish_frame(&reply, &chunk(0)).await.unwrap();
    bus.publish_frame(&reply, &chunk(2)).await.unwrap();
    assert_eq!(pending.next().await.unwrap().seq(), 0);
    let err = pending.next().await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    drop(pending);
    let cancel = cancel_of(&mut cancels).await;
    assert_eq!(cancel.request_id, id);
    assert_eq!(cancel.reason, CancelReason::ReplyBroken);
    assert_eq!(router.waiting(), 0, "dropping the request unregisters it");
}

#[tokio::test]
async fn a_silent_worker_past_the_deadline_is_deadline_exceeded() {
    let bus = bus().await;
    let router = ReplyRouter::start(bus.client(), bus.subjects(), "ing")
        .await
        .unwrap();
    let id = Uuid::now_v7();
    let mut cancels = bus
        .client()
        .subscribe(bus.subjects().cancel(id))
        .await
        .unwrap();
    let mut pending = Pending::new(
        router.register(id, 16),
        bus.clone(),
        Instant::now() + Duration::from_millis(200),
    );
    let started = Instant::now();
    let err = pending.next().await.unwrap_err();
    assert_eq!(err.code, ErrorCode::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(pending);
    assert_eq!(
        cancel_of(&mut cancels).await.reason,
        CancelReason::DeadlineExceeded
    );
}

#[tokio::test]
async fn a_reader_too_slow_is_cut_off_at_once_and_its_request_cancelled() {
    let bus = bus().await;
    let router = ReplyRouter::start(bus.client(), bus.subjects(), "ing")
        .await
        .unwrap();
    let id = Uuid::now_v7();
    let mut cancels = bus
        .client()
        .subscribe(bus.subjects().cancel(id))
        .await
        .unwrap();
    let mut pending = Pending::new(
        router.register(id, 2),
        bus.clone(),
        Instant::now() + Duration::from_secs(5),
    );
    let reply = bus.subjects().reply("ing", id);
    for seq in 0..5 {
        bus.publish_frame(&reply, &chunk(seq)).await.unwrap();
    }
    bus.client().flush().await.unwrap();
    // Wait until the router has seen all five (it drops the request on the third).
    let until = Instant::now() + Duration::from_secs(5);
    while router.waiting() != 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(router.waiting(), 0);
    // The workers are told at once, without waiting for the reader.
    let msg = tokio::time::timeout(Duration::from_secs(5), cancels.next())
        .await
        .expect("no cancel for the cut-off request")
        .unwrap();
    let cancel: Cancel = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(cancel.request_id, id);
    assert_eq!(cancel.reason, CancelReason::ReplyBroken);
    // The reader gets the error next, not the frames still buffered.
    let e = pending.next().await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("too slowly"), "{}", e.message);
}
