use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use sy_bus::Bus;
use sy_protocol::chat::Usage;
use sy_protocol::{
    ChunkFrame, ErrorCode, FinalFrame, FrameError, ReplyFrame, RequestEnvelope, StartInfo,
    now_unix_ms,
};
use sy_providers::{AnyProvider, CallContext, Provider, ProviderError};
use tracing::Instrument;

use crate::CancelRegistry;

/// What every request of one provider pool shares.
pub(crate) struct Shared {
    pub bus: Bus,
    pub provider_name: String,
    pub adapter: AnyProvider,
    pub cancels: CancelRegistry,
    pub progress_every: Duration,
}

/// Handles one pulled message from start to ack.
pub(crate) async fn handle(cx: Arc<Shared>, msg: jetstream::Message) {
    let (msg, acker) = msg.split();
    let env: RequestEnvelope = match serde_json::from_slice(&msg.payload) {
        Ok(env) => env,
        Err(e) => {
            tracing::error!(subject = %msg.subject, error = %e, "Dropping an unreadable request envelope.");
            let _ = acker.ack_with(AckKind::Term).await;
            return;
        }
    };
    let span = tracing::debug_span!(
        "worker.attempt",
        request_id = %env.request_id,
        provider = %cx.provider_name,
        model = %env.model,
        attempt = env.attempt,
    );
    async move {
        tracing::trace!("Request pulled.");
        let replier = Replier::new(&cx, &env);
        if now_unix_ms() >= env.deadline_unix_ms {
            tracing::debug!("Request expired before a worker took it.");
            replier
                .fail(FrameError::new(
                    ErrorCode::DeadlineExceeded,
                    "the request's deadline passed before a worker took it",
                ))
                .await;
            let _ = acker.ack().await;
            return;
        }
        let Some(running) = cx.cancels.begin(env.request_id) else {
            tracing::debug!("Request was cancelled before a worker took it.");
            let _ = acker.ack().await;
            return;
        };
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(env.deadline_unix_ms.saturating_sub(now_unix_ms()));
        let call = replier.run(&cx.adapter);
        tokio::pin!(call);
        // First progress ack one period from now. (Awaiting an interval's immediate
        // first tick costs a trip through the millisecond timer wheel: ~1 ms of
        // latency on every request.)
        let mut progress = tokio::time::interval_at(
            tokio::time::Instant::now() + cx.progress_every,
            cx.progress_every,
        );
        loop {
            tokio::select! {
                () = &mut call => break,
                _ = running.token().cancelled() => {
                    tracing::debug!("Request cancelled by the client; upstream call dropped.");
                    break;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!("Request deadline passed; upstream call dropped.");
                    break;
                }
                _ = progress.tick() => {
                    let _ = acker.ack_with(AckKind::Progress).await;
                }
            }
        }
        // The upstream call is dropped here at the latest, closing its connection.
        if let Err(e) = acker.ack().await {
            tracing::warn!(error = %e, "Ack failed; the request may be redelivered.");
        }
    }
    .instrument(span)
    .await;
}

/// Publishes one request's frames in order.
struct Replier<'a> {
    bus: &'a Bus,
    env: &'a RequestEnvelope,
    provider: &'a str,
    seq: u32,
}

impl<'a> Replier<'a> {
    fn new(cx: &'a Shared, env: &'a RequestEnvelope) -> Self {
        Replier {
            bus: &cx.bus,
            env,
            provider: &cx.provider_name,
            seq: 0,
        }
    }

    fn start_info(&self, meta: Option<sy_providers::ResponseMeta>) -> StartInfo {
        let meta = meta.unwrap_or_default();
        StartInfo {
            provider: self.provider.to_owned(),
            model: self.env.model.clone(),
            served_model: meta.model,
            response_id: meta.id,
            created: meta.created,
            system_fingerprint: meta.system_fingerprint,
            attempt: self.env.attempt,
        }
    }

    async fn publish(&mut self, frame: ReplyFrame) {
        self.seq += 1;
        if let Err(e) = self.bus.publish_frame(&self.env.reply_to, &frame).await {
            tracing::warn!(error = %e, "Publishing a reply frame failed.");
        }
    }

    async fn fail(mut self, error: FrameError) {
        let start = (self.seq == 0).then(|| self.start_info(None));
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start,
            finish_reason: None,
            usage: None,
            error: Some(error),
        });
        self.publish(frame).await;
    }

    /// Calls the provider and relays its answer; always ends with a final frame.
    async fn run(mut self, adapter: &AnyProvider) {
        let cx = CallContext {
            model: self.env.model.clone(),
            stream: self.env.request.is_stream(),
        };
        let mut stream = match adapter.chat(&self.env.request, &cx).await {
            Ok(s) => s,
            Err(e) => return self.provider_failed(e).await,
        };
        tracing::trace!("Provider answered.");
        let mut usage: Option<Usage> = None;
        let mut finish_reason = None;
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(c) => c,
                Err(e) => return self.provider_failed(e).await,
            };
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
            if let Some(f) = chunk
                .choices
                .iter()
                .find(|c| c.index == 0)
                .and_then(|c| c.finish_reason.clone())
            {
                finish_reason = Some(f);
            }
            if chunk.choices.is_empty() && (self.seq > 0 || chunk.meta.is_none()) {
                continue;
            }
            let start = (self.seq == 0).then(|| self.start_info(chunk.meta));
            let frame = ReplyFrame::Chunk(ChunkFrame {
                seq: self.seq,
                start,
                choices: chunk.choices,
            });
            self.publish(frame).await;
        }
        let start = (self.seq == 0).then(|| self.start_info(None));
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start,
            finish_reason,
            usage,
            error: None,
        });
        self.publish(frame).await;
        tracing::trace!("Final frame published.");
    }

    async fn provider_failed(self, e: ProviderError) {
        tracing::debug!(error = %e, "Provider call failed.");
        let fe = e.to_frame_error(self.provider);
        self.fail(fe).await;
    }
}
