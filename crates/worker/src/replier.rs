//! The upstream call and its frames: calling the provider, relaying the answer
//! frame by frame (a batch item's: stored whole with its usage event).

use std::time::Duration;

use futures::StreamExt;
use sy_bus::Bus;
use sy_config::ProviderConfig;
use sy_protocol::TokenUsage;
use sy_protocol::audio::{
    BYTES_FRAME_MAX, BytesFrame, SpeechRequest, TextFrame, TranscriptionRequest,
};
use sy_protocol::batch::BatchResult;
use sy_protocol::embeddings::{EmbeddingFrame, EmbeddingsRequest};
use sy_protocol::images::{INLINE_IMAGE_B64_BYTES, ImageData, ImageFrame, ImagesRequest};
use sy_protocol::rerank::{RerankFrame, RerankRequest, RerankResult};
use sy_protocol::{
    ChunkFrame, FinalFrame, FrameError, ReplyFrame, RequestEnvelope, StartInfo, UsageEvent,
    now_unix_ms,
};
use sy_providers::{AnyProvider, CallContext, Provider, ProviderError, ResponseMeta};

use crate::attempt::AttemptState;
use crate::shared::Shared;
use crate::splice::Fit;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Publishes one request's frames in order (a batch item's: stores them all
/// with the final frame as its result).
pub(crate) struct Replier<'a> {
    pub(crate) bus: &'a Bus,
    pub(crate) env: &'a RequestEnvelope,
    pub(crate) provider: &'a str,
    pub(crate) attempt: u32,
    pub(crate) seq: u32,
    /// A batch item's frames so far.
    pub(crate) held: Vec<ReplyFrame>,
    /// A batch item's result waits for `settle` (to be stored with its usage
    /// event) instead of being stored with the final frame.
    pub(crate) deferred: bool,
    pub(crate) unsettled: &'a std::sync::Mutex<std::collections::HashSet<uuid::Uuid>>,
    /// The credential this call uses instead of the entry's (an org's own
    /// or a global one from the control plane), if any.
    pub(crate) credential: Option<sy_providers::Credential>,
    /// When this attempt's call began (the replier is made just before it).
    pub(crate) started: std::time::Instant,
    /// When the message was pulled and when its envelope was read, for a
    /// request that asked where its time went (`RequestEnvelope::timing`).
    pub(crate) pulled: Option<(std::time::Instant, std::time::Instant)>,
    /// The blob store, for images too large for a frame.
    pub(crate) blobs: &'a tokio::sync::OnceCell<async_nats::jetstream::object_store::ObjectStore>,
}

impl<'a> Replier<'a> {
    pub(crate) fn new(cx: &'a Shared, env: &'a RequestEnvelope, attempt: u32) -> Self {
        Replier {
            bus: &cx.bus,
            env,
            provider: &cx.provider.name,
            attempt,
            seq: env.resume.as_ref().map_or(0, |r| r.seq),
            started: std::time::Instant::now(),
            pulled: None,
            held: Vec::new(),
            blobs: &cx.blobs,
            deferred: false,
            unsettled: &cx.unsettled,
            credential: cx.credentials.as_ref().and_then(|table| {
                let org = env
                    .org_id
                    .as_deref()
                    .and_then(|o| uuid::Uuid::parse_str(o).ok());
                table
                    .resolve(org, &cx.provider.name)
                    .map(sy_providers::Credential)
            }),
        }
    }

    pub(crate) fn start_info(&self, meta: Option<ResponseMeta>) -> StartInfo {
        StartInfo {
            provider: self.provider.to_owned(),
            upstream_model: self.env.upstream_model.clone(),
            response: meta.unwrap_or_default(),
            attempt: self.attempt,
            upstream_us: Some(micros(self.started.elapsed())),
            stages: self.pulled.map(|(pulled, read)| sy_protocol::WorkerStages {
                decode_us: micros(read.saturating_duration_since(pulled)),
                setup_us: micros(self.started.saturating_duration_since(read)),
            }),
        }
    }

    pub(crate) async fn publish(&mut self, frame: ReplyFrame) {
        self.seq += 1;
        if self.env.batch.is_some() {
            let last = matches!(frame, ReplyFrame::Final(_));
            self.held.push(frame);
            if last && !self.deferred {
                self.store_held(None).await;
            }
            return;
        }
        if let Err(e) = self.bus.publish_frame(&self.env.reply_to, &frame).await {
            tracing::warn!(error = %e, "Publishing a reply frame failed.");
        }
    }

    /// Stores a deferred batch item's result, once it holds its final frame,
    /// with the usage event of the call behind it: the answer and its bill are
    /// stored in one message, so no crash can keep one without the other.
    pub(crate) async fn settle(&mut self, event: &UsageEvent) {
        if self.env.batch.is_some() && matches!(self.held.last(), Some(ReplyFrame::Final(_))) {
            self.store_held(Some(event.clone())).await;
        }
    }

    /// Stores a batch item's frames held so far as its result, with `usage`.
    async fn store_held(&mut self, usage: Option<UsageEvent>) {
        let Some(item) = &self.env.batch else {
            return;
        };
        let result = BatchResult {
            batch_id: item.batch_id.clone(),
            index: item.index,
            custom_id: item.custom_id.clone(),
            request_id: self.env.request_id,
            frames: std::mem::take(&mut self.held),
            usage,
        };
        self.store(&result).await;
    }

    /// Ends the request with `error`; a batch item's result carries `event`.
    pub(crate) async fn fail_billed(mut self, error: FrameError, event: &UsageEvent) {
        self.deferred = true;
        self.fail(error).await;
        self.settle(event).await;
    }

    /// Stores a batch item's result, retrying briefly; marks the item unsettled
    /// (to be run again) when the bus would not take it.
    pub(crate) async fn store(&self, result: &BatchResult) {
        let mut delay = Duration::from_millis(100);
        for _ in 0..4 {
            match self.bus.publish_batch_result(result).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "Storing a batch result failed; retrying.");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
            }
        }
        if let Ok(mut u) = self.unsettled.lock() {
            u.insert(self.env.request_id);
        }
    }

    pub(crate) async fn fail(&mut self, error: FrameError) {
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
    pub(crate) async fn run_embeddings(
        &mut self,
        adapter: &AnyProvider,
        provider: &ProviderConfig,
        req: &EmbeddingsRequest,
        state: &mut AttemptState,
    ) {
        let cx = self.whole_answer_call();
        state.reached_provider = true;
        let emb = match self.answer_within(provider, adapter.embed(req, &cx)).await {
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
        state.usage = emb.usage;
        let meta = ResponseMeta {
            served_model: emb.model,
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
        let usage = state.usage.unwrap_or_else(|| TokenUsage {
            input_tokens: crate::tokens::estimate_embeddings(&self.env.upstream_model, req),
            ..TokenUsage::default()
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

    /// The context of a call answered whole (embeddings, rerank, images).
    fn whole_answer_call(&self) -> CallContext {
        CallContext {
            upstream_model: self.env.upstream_model.clone(),
            stream: false,
            credential: self.credential.clone(),
        }
    }

    /// `call` (a one-shot JSON call: embeddings, rerank, images), given up after
    /// the route's or the target's `response_timeout` as a timeout (so the
    /// request falls back instead of waiting out its deadline).
    async fn answer_within<T>(
        &self,
        provider: &ProviderConfig,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let limit = self
            .env
            .watchdogs
            .response_ms
            .map_or(provider.response_timeout, Duration::from_millis);
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(ProviderError::Timeout(format!(
                "no answer within {} s",
                limit.as_secs_f64()
            )))
        })
    }

    /// Generates the images and sends one frame per image (a large one's
    /// bytes in the blob store, named in its frame), then the final frame.
    pub(crate) async fn run_images(
        &mut self,
        adapter: &AnyProvider,
        provider: &ProviderConfig,
        req: &ImagesRequest,
        state: &mut AttemptState,
    ) {
        let cx = self.whole_answer_call();
        state.reached_provider = true;
        let answer = match &req.edit {
            None => self.answer_within(provider, adapter.images(req, &cx)).await,
            Some(edit) => {
                // The images and the mask, read from the blob store.
                let mut files = Vec::new();
                for upload in edit.images.iter().chain(&edit.mask) {
                    match self.read_blob(&upload.blob).await {
                        Ok(bytes) => files.push((upload.clone(), bytes)),
                        Err(e) => return self.provider_failed(e, state).await,
                    }
                }
                self.answer_within(provider, adapter.edit_images(req, files, &cx))
                    .await
            }
        };
        let drawn = match answer {
            Ok(d) => d,
            Err(e) => return self.provider_failed(e, state).await,
        };
        if drawn.images.is_empty() || drawn.images.len() > req.count() as usize {
            let e = ProviderError::Protocol(format!(
                "{} images for {} asked",
                drawn.images.len(),
                req.count()
            ));
            return self.provider_failed(e, state).await;
        }
        // What the provider made is billed even if storing it fails below.
        state.served_model.clone_from(&drawn.model);
        state.usage = drawn.usage;
        state.output_images = drawn.images.len() as u64;
        // Large images into the blob store first: a failure there is this
        // attempt's (retried, or the fallback's), before anything is sent.
        let mut images = Vec::with_capacity(drawn.images.len());
        for (i, g) in drawn.images.into_iter().enumerate() {
            let mut image = ImageData {
                url: g.url,
                content_type: g.content_type,
                revised_prompt: g.revised_prompt,
                ..ImageData::default()
            };
            match g.b64 {
                Some(b64) if b64.len() > INLINE_IMAGE_B64_BYTES => {
                    match self
                        .store_blob(i, &b64, image.content_type.as_deref())
                        .await
                    {
                        Ok(name) => image.blob = Some(name),
                        Err(e) => return self.provider_failed(e, state).await,
                    }
                }
                b64 => image.b64_json = b64,
            }
            images.push(image);
        }
        state.first_token_unix_ms = Some(now_unix_ms());
        let mut meta = Some(ResponseMeta {
            served_model: drawn.model,
            ..ResponseMeta::default()
        });
        for (i, image) in images.into_iter().enumerate() {
            let start = (self.seq == 0).then(|| self.start_info(meta.take()));
            let frame = ReplyFrame::Image(ImageFrame {
                seq: self.seq,
                start,
                index: i as u32,
                image,
            });
            self.publish(frame).await;
        }
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start: None,
            finish_reason: None,
            usage: state.usage,
            error: None,
        });
        self.publish(frame).await;
    }

    /// Transcribes (or translates) the uploaded audio, read from the blob
    /// store, and sends the transcript as one text frame, then the final
    /// frame.
    pub(crate) async fn run_transcription(
        &mut self,
        adapter: &AnyProvider,
        provider: &ProviderConfig,
        req: &TranscriptionRequest,
        state: &mut AttemptState,
    ) {
        let audio = match self.read_blob(&req.file.blob).await {
            Ok(a) => a,
            Err(e) => return self.provider_failed(e, state).await,
        };
        let cx = self.whole_answer_call();
        state.reached_provider = true;
        let heard = match self
            .answer_within(provider, adapter.transcribe(req, audio, &cx))
            .await
        {
            Ok(t) => t,
            Err(e) => return self.provider_failed(e, state).await,
        };
        state.first_token_unix_ms = Some(now_unix_ms());
        state.usage = heard.usage;
        state.audio_seconds = heard.seconds;
        state.output_text.clone_from(&heard.body);
        let start = (self.seq == 0).then(|| self.start_info(None));
        let frame = ReplyFrame::Text(TextFrame {
            seq: self.seq,
            start,
            content_type: heard.content_type,
            body: heard.body,
            audio_seconds: heard.seconds,
        });
        self.publish(frame).await;
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start: None,
            finish_reason: None,
            usage: state.usage,
            error: None,
        });
        self.publish(frame).await;
    }

    /// The blob store, opened by the first call that needs it.
    async fn blob_store(
        &self,
    ) -> Result<&async_nats::jetstream::object_store::ObjectStore, sy_bus::BusError> {
        self.blobs.get_or_try_init(|| self.bus.blob_store()).await
    }

    /// Speaks the text and relays the audio as it arrives, in frames of at
    /// most [`BYTES_FRAME_MAX`] bytes, then the final frame. The headers
    /// and first bytes must come within `ttft_timeout`, each later piece
    /// within `idle_timeout`. A failure after audio reached the client ends
    /// it with the error: no other target's audio is spliced onto it.
    pub(crate) async fn run_speech(
        &mut self,
        adapter: &AnyProvider,
        provider: &ProviderConfig,
        req: &SpeechRequest,
        state: &mut AttemptState,
    ) {
        use base64::Engine;
        let env = self.env;
        let limit =
            |route: Option<u64>, target: Duration| route.map_or(target, Duration::from_millis);
        let ttft = limit(env.watchdogs.ttft_ms, provider.ttft_timeout);
        let idle = limit(env.watchdogs.idle_ms, provider.idle_timeout);
        let cx = self.whole_answer_call();
        state.reached_provider = true;
        state.not_plain = true;
        let silent = |what: &str, limit: Duration| {
            ProviderError::Timeout(format!("{what} within {} s", limit.as_secs_f64()))
        };
        let first_by = tokio::time::Instant::now() + ttft;
        let mut stream = match tokio::time::timeout_at(first_by, adapter.speech(req, &cx)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return self.provider_failed(e, state).await,
            Err(_) => return self.provider_failed(silent("no audio", ttft), state).await,
        };
        loop {
            let by = if self.seq == 0 {
                first_by
            } else {
                tokio::time::Instant::now() + idle
            };
            let piece = match tokio::time::timeout_at(by, stream.next()).await {
                Ok(Some(Ok(b))) => b,
                Ok(Some(Err(e))) => return self.provider_failed(e, state).await,
                Ok(None) => break,
                Err(_) if self.seq == 0 => {
                    return self.provider_failed(silent("no audio", ttft), state).await;
                }
                Err(_) => {
                    let e = silent("the audio stalled: nothing", idle);
                    return self.provider_failed(e, state).await;
                }
            };
            if state.first_token_unix_ms.is_none() && !piece.is_empty() {
                state.first_token_unix_ms = Some(now_unix_ms());
            }
            for part in piece.chunks(BYTES_FRAME_MAX) {
                let start = (self.seq == 0).then(|| self.start_info(None));
                let frame = ReplyFrame::Bytes(BytesFrame {
                    seq: self.seq,
                    start,
                    data: base64::engine::general_purpose::STANDARD.encode(part),
                });
                self.publish(frame).await;
            }
        }
        let start = (self.seq == 0).then(|| self.start_info(None));
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start,
            finish_reason: None,
            usage: None,
            error: None,
        });
        self.publish(frame).await;
    }

    /// A blob's bytes (an upload the ingress stored).
    async fn read_blob(&self, name: &str) -> Result<Vec<u8>, ProviderError> {
        let store = self
            .blob_store()
            .await
            .map_err(|e| ProviderError::Protocol(format!("reading the upload failed: {e}")))?;
        match sy_bus::get_blob(store, name).await {
            Ok(Some((bytes, _))) => Ok(bytes),
            Ok(None) => Err(ProviderError::Protocol(
                "the upload is no longer stored".into(),
            )),
            Err(e) => Err(ProviderError::Protocol(format!(
                "reading the upload failed: {e}"
            ))),
        }
    }

    /// Puts image `index`'s bytes (given as base64) in the blob store under
    /// a name of this attempt's; returns the name.
    async fn store_blob(
        &self,
        index: usize,
        b64: &str,
        content_type: Option<&str>,
    ) -> Result<String, ProviderError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ProviderError::Protocol(format!("an image that is no base64: {e}")))?;
        let store = self
            .blob_store()
            .await
            .map_err(|e| ProviderError::Protocol(format!("storing the image failed: {e}")))?;
        let name = format!(
            "img-{}-{}-{index}",
            self.env.request_id.as_simple(),
            self.attempt
        );
        sy_bus::put_blob(
            store,
            &name,
            content_type.unwrap_or("application/octet-stream"),
            &bytes,
        )
        .await
        .map_err(|e| ProviderError::Protocol(format!("storing the image failed: {e}")))?;
        Ok(name)
    }

    /// Ranks the documents and sends the ranking as one frame (each
    /// document's text with it when asked), then the final frame.
    pub(crate) async fn run_rerank(
        &mut self,
        adapter: &AnyProvider,
        provider: &ProviderConfig,
        req: &RerankRequest,
        state: &mut AttemptState,
    ) {
        let cx = self.whole_answer_call();
        state.reached_provider = true;
        let ranked = match self.answer_within(provider, adapter.rerank(req, &cx)).await {
            Ok(r) => r,
            Err(e) => return self.provider_failed(e, state).await,
        };
        state.first_token_unix_ms = Some(now_unix_ms());
        state.served_model.clone_from(&ranked.model);
        state.usage = ranked.usage;
        state.search_units = ranked.search_units;
        let results = ranked
            .results
            .into_iter()
            .map(|(index, relevance_score)| RerankResult {
                index,
                relevance_score,
                document: req
                    .return_documents
                    .then(|| req.documents.get(index as usize).cloned())
                    .flatten(),
            })
            .collect();
        let meta = ResponseMeta {
            served_model: ranked.model,
            response_id: ranked.id,
            ..ResponseMeta::default()
        };
        let start = (self.seq == 0).then(|| self.start_info(Some(meta)));
        let frame = ReplyFrame::Rerank(RerankFrame {
            seq: self.seq,
            start,
            results,
            search_units: ranked.search_units.unwrap_or(0),
        });
        self.publish(frame).await;
        let usage = state.usage.unwrap_or_else(|| TokenUsage {
            input_tokens: crate::tokens::estimate_rerank(&self.env.upstream_model, req),
            ..TokenUsage::default()
        });
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start: None,
            finish_reason: None,
            usage: Some(usage),
            error: None,
        });
        self.publish(frame).await;
    }

    /// Calls the provider and relays its answer. Ends with a final frame, except
    /// when the call failed before anything was sent (`seq` still 0): then the
    /// error is in `state` and the caller decides (retry, fallback or final).
    /// Everything learned goes into `state` as it happens. Streamed calls must
    /// bring their first token within `ttft_timeout` and then never stay silent
    /// longer than `idle_timeout`; other calls must answer within `response_timeout`.
    pub(crate) async fn run(
        &mut self,
        adapter: &AnyProvider,
        provider: &ProviderConfig,
        state: &mut AttemptState,
    ) {
        let env = self.env;
        if let Some(req) = &env.embeddings {
            return self.run_embeddings(adapter, provider, req, state).await;
        }
        // The other APIs' runs are boxed: inline, their futures would grow
        // every chat call's state machine, which is moved whole.
        if let Some(req) = &env.rerank {
            return Box::pin(self.run_rerank(adapter, provider, req, state)).await;
        }
        if let Some(req) = &env.images {
            return Box::pin(self.run_images(adapter, provider, req, state)).await;
        }
        if let Some(req) = &env.transcription {
            return Box::pin(self.run_transcription(adapter, provider, req, state)).await;
        }
        if let Some(req) = &env.speech {
            return Box::pin(self.run_speech(adapter, provider, req, state)).await;
        }
        let stream_mode = env.request.is_stream();
        let cx = CallContext {
            upstream_model: env.upstream_model.clone(),
            stream: stream_mode,
            credential: self.credential.clone(),
        };
        // A continued stream: the target continues the text as an assistant
        // prefill when it can, else answers anew and is spliced.
        let (request, mut fit) = match &env.resume {
            None => (std::borrow::Cow::Borrowed(&env.request), Fit::Fresh),
            // (A prefill of nothing but whitespace would be refused: splice.)
            Some(r) if provider.prefill && !r.text.trim_end().is_empty() => {
                let kept = r.text.trim_end();
                let mut req = env.request.clone();
                req.messages
                    .push(sy_protocol::chat::Message::assistant_text(kept));
                if provider.kind == sy_config::ProviderKind::OpenAiCompatible {
                    // vLLM's spelling of "continue this assistant message".
                    req.extra
                        .insert("continue_final_message".into(), true.into());
                    req.extra
                        .insert("add_generation_prompt".into(), false.into());
                }
                let ws = r.text[kept.len()..].to_owned();
                (std::borrow::Cow::Owned(req), Fit::Prefill { ws })
            }
            Some(r) => (
                std::borrow::Cow::Borrowed(&env.request),
                Fit::Splice {
                    text: r.text.clone(),
                    matched: 0,
                },
            ),
        };
        let base = self.seq;
        let limit =
            |route: Option<u64>, target: Duration| route.map_or(target, Duration::from_millis);
        let ttft_timeout = limit(env.watchdogs.ttft_ms, provider.ttft_timeout);
        let idle_timeout = limit(env.watchdogs.idle_ms, provider.idle_timeout);
        let response_timeout = limit(env.watchdogs.response_ms, provider.response_timeout);
        let started = tokio::time::Instant::now();
        // Streamed: the headers within `header_timeout` when it is set (the
        // first token then within `ttft_timeout` of them), else both within
        // `ttft_timeout` of the request.
        let separate_headers = provider.header_timeout.filter(|_| stream_mode);
        let headers_by = started
            + match (stream_mode, separate_headers) {
                (true, Some(h)) => h,
                (true, None) => ttft_timeout,
                (false, _) => response_timeout,
            };
        let silent = |what: &str, limit: Duration| {
            ProviderError::Timeout(format!("{what} within {} s", limit.as_secs_f64()))
        };
        state.reached_provider = true;
        let mut stream =
            match tokio::time::timeout_at(headers_by, adapter.chat(&request, &cx)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return self.provider_failed(e, state).await,
                Err(_) => {
                    let e = match (stream_mode, separate_headers) {
                        (true, Some(h)) => silent("no response headers", h),
                        (true, None) => silent("no first token", ttft_timeout),
                        (false, _) => silent("no answer", response_timeout),
                    };
                    return self.provider_failed(e, state).await;
                }
            };
        let first_by = match separate_headers {
            Some(_) => tokio::time::Instant::now() + ttft_timeout,
            None => headers_by,
        };
        tracing::trace!("Provider answered.");
        // Meta-only events (a stream's opening) wait for the first content, so
        // that nothing reaches the client before the target has really answered.
        let mut held_meta = None;
        loop {
            let by = if !stream_mode || self.seq == base {
                first_by
            } else {
                tokio::time::Instant::now() + idle_timeout
            };
            let item = match tokio::time::timeout_at(by, stream.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    let e = match (stream_mode, self.seq == base) {
                        (true, true) => silent("no first token", ttft_timeout),
                        (true, false) => silent("the stream stalled: no chunk", idle_timeout),
                        (false, _) => silent("no answer", response_timeout),
                    };
                    return self.provider_failed(e, state).await;
                }
            };
            let mut chunk = match item {
                Ok(c) => c,
                Err(e) => return self.provider_failed(e, state).await,
            };
            if chunk.usage.is_some() {
                state.usage = chunk.usage;
            }
            if let Some(meta) = &chunk.meta {
                state.served_model.clone_from(&meta.served_model);
            }
            for c in &mut chunk.choices {
                if c.index != 0 || c.delta.refusal.is_some() || c.delta.tool_calls.is_some() {
                    state.not_plain = true;
                }
                if c.index == 0
                    && let Some(text) = &c.delta.content
                {
                    let Some(sent) = fit.take(text) else {
                        state.diverged = true;
                        let e = ProviderError::Protocol(
                            "the fallback's answer diverged from the text already sent".into(),
                        );
                        return self.provider_failed(e, state).await;
                    };
                    state.content.push_str(sent);
                    if sent.len() != text.len() {
                        c.delta.content = Some(sent.to_owned());
                    }
                }
                if env.resume.is_some() {
                    // The client has its opening already.
                    c.delta.role = None;
                }
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
            // Choices left with nothing to say (held back, or an opening the
            // client already has) are not sent.
            chunk.choices.retain(|c| {
                c.finish_reason.is_some()
                    || c.delta.refusal.is_some()
                    || c.delta.tool_calls.is_some()
                    || c.delta.content.as_deref().is_some_and(|t| !t.is_empty())
                    || (c.delta.role.is_some() && env.resume.is_none())
            });
            if chunk.choices.is_empty() {
                if self.seq == base && held_meta.is_none() {
                    held_meta = chunk.meta;
                }
                continue;
            }
            if state.first_token_unix_ms.is_none() {
                state.first_token_unix_ms = Some(now_unix_ms());
            }
            let meta = chunk.meta.take().or_else(|| held_meta.take());
            // A continued stream's first frame says who continues it.
            let start = (self.seq == base).then(|| self.start_info(meta));
            let frame = ReplyFrame::Chunk(ChunkFrame {
                seq: self.seq,
                start,
                choices: chunk.choices,
            });
            self.publish(frame).await;
        }
        if !fit.caught_up() {
            state.diverged = true;
            let e = ProviderError::Protocol(
                "the fallback's answer ended before reproducing the text already sent".into(),
            );
            return self.provider_failed(e, state).await;
        }
        let start = (self.seq == base).then(|| self.start_info(held_meta.take()));
        let frame = ReplyFrame::Final(FinalFrame {
            seq: self.seq,
            start,
            finish_reason: state.finish_reason.clone(),
            usage: state.usage,
            error: None,
        });
        self.publish(frame).await;
        tracing::trace!("Final frame published.");
    }

    /// Records the failure; the caller decides what the client gets (a retry,
    /// a fallback, a recovery, or the error).
    pub(crate) async fn provider_failed(&mut self, e: ProviderError, state: &mut AttemptState) {
        tracing::debug!(error = %e, "Provider call failed.");
        state.error = Some(e.to_frame_error(self.provider));
    }
}
