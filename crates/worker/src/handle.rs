use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use sy_bus::Bus;
use sy_config::ProviderConfig;
use sy_protocol::chat::Usage;
use sy_protocol::embeddings::{EmbeddingFrame, EmbeddingsRequest};
use sy_protocol::{
    ChunkFrame, ErrorCode, FinalFrame, FrameError, ReplyFrame, RequestEnvelope, StartInfo,
    UsageStatus, now_unix_ms,
};
use sy_providers::{AnyProvider, CallContext, Provider, ProviderError, ResponseMeta};
use tracing::Instrument;

use crate::CancelRegistry;
use crate::usage::{self, Ended};

/// What every request of one provider pool shares.
pub(crate) struct Shared {
    pub bus: Bus,
    pub provider: ProviderConfig,
    pub adapter: AnyProvider,
    pub cancels: CancelRegistry,
    pub progress_every: Duration,
    pub worker_id: String,
    pub markup_ppb: i64,
}

/// What an attempt learned, kept outside the call so that it survives a cancel.
#[derive(Debug, Default)]
pub(crate) struct AttemptState {
    pub reached_provider: bool,
    pub first_token_unix_ms: Option<u64>,
    pub served_model: Option<String>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// Generated text (content, refusals, tool arguments), for estimates only.
    pub output_text: String,
    pub error: Option<FrameError>,
}

/// Handles one pulled message from start to ack.
pub(crate) async fn handle(cx: Arc<Shared>, msg: jetstream::Message) {
    let dispatched_unix_ms = now_unix_ms();
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
        provider = %cx.provider.name,
        model = %env.model,
        attempt = env.attempt,
    );
    async move {
        tracing::trace!("Request pulled.");
        let mut state = AttemptState::default();
        let ended = if dispatched_unix_ms >= env.deadline_unix_ms {
            tracing::debug!("Request expired before a worker took it.");
            let error = FrameError::new(
                ErrorCode::DeadlineExceeded,
                "the request's deadline passed before a worker took it",
            );
            Replier::new(&cx, &env).fail(error.clone()).await;
            state.error = Some(error);
            Ended::Expired
        } else if let Some(running) = cx.cancels.begin(env.request_id) {
            let deadline = tokio::time::Instant::now()
                + Duration::from_millis(env.deadline_unix_ms.saturating_sub(now_unix_ms()));
            let call = Replier::new(&cx, &env).run(&cx.adapter, &mut state);
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
                    () = &mut call => break Ended::Done,
                    _ = running.token().cancelled() => {
                        tracing::debug!("Request cancelled by the client; upstream call dropped.");
                        break Ended::Cancelled;
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        tracing::debug!("Request deadline passed; upstream call dropped.");
                        break Ended::Expired;
                    }
                    _ = progress.tick() => {
                        let _ = acker.ack_with(AckKind::Progress).await;
                    }
                }
            }
            // The upstream call is dropped here at the latest, closing its connection.
        } else {
            tracing::debug!("Request was cancelled before a worker took it.");
            Ended::Cancelled
        };
        let event = usage::event(&cx, &env, &state, ended, dispatched_unix_ms);
        if event.status != UsageStatus::Ok {
            tracing::debug!(status = event.status.as_str(), "Attempt did not complete.");
        }
        if let Some(o) = usage::observation(&event, ended) {
            // At most once: a lost observation only delays what routers learn.
            if let Err(e) = cx.bus.publish_observation(&o).await {
                tracing::debug!(error = %e, "Live observation not sent.");
            }
        }
        usage::publish(&cx.bus, &event, &acker).await;
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
            provider: &cx.provider.name,
            seq: 0,
        }
    }

    fn start_info(&self, meta: Option<ResponseMeta>) -> StartInfo {
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

    /// Embeds the input and sends one frame per vector, then the final frame.
    async fn run_embeddings(
        mut self,
        adapter: &AnyProvider,
        req: &EmbeddingsRequest,
        state: &mut AttemptState,
    ) {
        let cx = CallContext {
            model: self.env.model.clone(),
            stream: false,
        };
        state.reached_provider = true;
        let emb = match adapter.embed(req, &cx).await {
            Ok(e) => e,
            Err(e) => return self.provider_failed(e, state).await,
        };
        if emb.vectors.len() != req.input.len() {
            let e = ProviderError::Protocol(format!(
                "{} vectors for {} inputs",
                emb.vectors.len(),
                req.input.len()
            ));
            return self.provider_failed(e, state).await;
        }
        state.first_token_unix_ms = Some(now_unix_ms());
        state.served_model.clone_from(&emb.model);
        state.usage.clone_from(&emb.usage);
        let meta = ResponseMeta {
            model: emb.model,
            ..ResponseMeta::default()
        };
        let mut meta = Some(meta);
        for (i, v) in emb.vectors.into_iter().enumerate() {
            let start = (self.seq == 0).then(|| self.start_info(meta.take()));
            let frame = ReplyFrame::Embedding(EmbeddingFrame {
                seq: self.seq,
                start,
                index: i as u32,
                embedding: v,
            });
            self.publish(frame).await;
        }
        // The client's usage: the provider's, else our estimate (the usage event
        // marks it as estimated).
        let usage = state.usage.clone().unwrap_or_else(|| {
            let n = crate::tokens::estimate_embeddings(&self.env.model, req);
            Usage {
                prompt_tokens: n,
                total_tokens: n,
                ..Usage::default()
            }
        });
        let start = (self.seq == 0).then(|| self.start_info(None));
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start,
            finish_reason: None,
            usage: Some(usage),
            error: None,
        });
        self.publish(frame).await;
    }

    /// Calls the provider and relays its answer; always ends with a final frame.
    /// Everything learned goes into `state` as it happens.
    async fn run(mut self, adapter: &AnyProvider, state: &mut AttemptState) {
        if let Some(req) = &self.env.embeddings {
            return self.run_embeddings(adapter, req, state).await;
        }
        let cx = CallContext {
            model: self.env.model.clone(),
            stream: self.env.request.is_stream(),
        };
        state.reached_provider = true;
        let mut stream = match adapter.chat(&self.env.request, &cx).await {
            Ok(s) => s,
            Err(e) => return self.provider_failed(e, state).await,
        };
        tracing::trace!("Provider answered.");
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(c) => c,
                Err(e) => return self.provider_failed(e, state).await,
            };
            if chunk.usage.is_some() {
                state.usage = chunk.usage;
            }
            if let Some(meta) = &chunk.meta {
                state.served_model.clone_from(&meta.model);
            }
            for c in &chunk.choices {
                let d = &c.delta;
                for piece in [&d.content, &d.refusal].into_iter().flatten() {
                    state.output_text.push_str(piece);
                }
                for tc in d.tool_calls.iter().flatten() {
                    if let Some(args) = tc.function.as_ref().and_then(|f| f.arguments.as_ref()) {
                        state.output_text.push_str(args);
                    }
                }
                if c.index == 0 && c.finish_reason.is_some() {
                    state.finish_reason.clone_from(&c.finish_reason);
                }
            }
            if chunk.choices.is_empty() && (self.seq > 0 || chunk.meta.is_none()) {
                continue;
            }
            if state.first_token_unix_ms.is_none() {
                state.first_token_unix_ms = Some(now_unix_ms());
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
            finish_reason: state.finish_reason.clone(),
            usage: state.usage.clone(),
            error: None,
        });
        self.publish(frame).await;
        tracing::trace!("Final frame published.");
    }

    async fn provider_failed(self, e: ProviderError, state: &mut AttemptState) {
        tracing::debug!(error = %e, "Provider call failed.");
        let fe = e.to_frame_error(self.provider);
        state.error = Some(fe.clone());
        self.fail(fe).await;
    }
}
