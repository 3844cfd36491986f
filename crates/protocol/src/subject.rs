use uuid::Uuid;

/// Builds every NATS subject and stream name. No subject literal lives elsewhere.
///
/// All names hang off a namespace (`sy` by default; tests use a unique one each):
/// `sy.req.<provider>.<route>`, `sy.reply.<ingress>.<request>`, `sy.cancel.<request>`,
/// `sy.usage`, `sy.live.<provider>`, and the streams `SY_REQ`, `SY_USAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    ns: String,
    stream_prefix: String,
}

impl Subjects {
    /// Subjects under `namespace`, which must be a valid subject token (see [`is_valid_token`]).
    pub fn new(namespace: &str) -> Self {
        Subjects {
            ns: namespace.to_owned(),
            stream_prefix: namespace.to_ascii_uppercase().replace('-', "_"),
        }
    }

    /// The namespace these subjects hang off.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Where the control plane announces a change to an API key (core NATS):
    /// every ingress applies it to its key table.
    pub fn key_notices(&self) -> String {
        format!("{}.control.keys", self.ns)
    }

    /// Where every ingress says it is alive, once a second (core NATS): each
    /// counts the live replicas, to share rate limits while Redis is away.
    pub fn ingress_alive(&self) -> String {
        format!("{}.ingress.alive", self.ns)
    }

    /// Where the control plane announces that provider credentials changed
    /// (core NATS): every worker reloads them.
    pub fn credential_notices(&self) -> String {
        format!("{}.control.credentials", self.ns)
    }

    /// Where the ingress publishes a request for `provider` on `route` (both tokens).
    pub fn request(&self, provider: &str, route: &str) -> String {
        format!("{}.req.{provider}.{route}", self.ns)
    }

    /// Filter for every request to one provider: a worker pool's consumer filter.
    pub fn request_filter(&self, provider: &str) -> String {
        format!("{}.req.{provider}.>", self.ns)
    }

    /// Filter for every request subject: the request stream's subjects.
    pub fn request_all(&self) -> String {
        format!("{}.req.>", self.ns)
    }

    /// Where the worker sends the frames of one request back to its ingress.
    pub fn reply(&self, ingress_id: &str, request_id: Uuid) -> String {
        format!("{}.reply.{ingress_id}.{}", self.ns, request_id.as_simple())
    }

    /// The one wildcard subscription an ingress holds for all its replies.
    pub fn reply_filter(&self, ingress_id: &str) -> String {
        format!("{}.reply.{ingress_id}.*", self.ns)
    }

    /// Where the ingress says that nobody waits for `request_id` any more.
    pub fn cancel(&self, request_id: Uuid) -> String {
        format!("{}.cancel.{}", self.ns, request_id.as_simple())
    }

    /// The one wildcard subscription a worker process holds for cancels.
    pub fn cancel_filter(&self) -> String {
        format!("{}.cancel.*", self.ns)
    }

    /// Where workers publish usage events (one per attempt).
    pub fn usage(&self) -> String {
        format!("{}.usage", self.ns)
    }

    /// Where workers broadcast what each call taught about `provider`'s targets.
    pub fn live(&self, provider: &str) -> String {
        format!("{}.live.{provider}", self.ns)
    }

    /// The one subscription an ingress holds for every live observation.
    pub fn live_filter(&self) -> String {
        format!("{}.live.*", self.ns)
    }

    /// Name of the JetStream work-queue stream holding requests.
    pub fn request_stream(&self) -> String {
        format!("{}_REQ", self.stream_prefix)
    }

    /// Name of the KV bucket holding operators' target overrides.
    pub fn targets_bucket(&self) -> String {
        format!("{}_TARGETS", self.stream_prefix)
    }

    /// Name of the KV bucket of completion marks: one key per request message
    /// a worker finished, so a redelivery is acked without calling the provider.
    pub fn done_bucket(&self) -> String {
        format!("{}_DONE", self.stream_prefix)
    }

    /// Name of the KV bucket of pipeline runs (`GET /v1/pipelines/runs/{id}`).
    pub fn pipeline_runs_bucket(&self) -> String {
        format!("{}_PIPELINE_RUNS", self.stream_prefix)
    }

    /// Name of the KV bucket remembering `Idempotency-Key`s.
    pub fn idempotency_bucket(&self) -> String {
        format!("{}_IDEMPOTENCY", self.stream_prefix)
    }

    /// Name of the JetStream stream holding usage events.
    pub fn usage_stream(&self) -> String {
        format!("{}_USAGE", self.stream_prefix)
    }

    /// Name of the durable consumer of one provider's worker pool.
    pub fn worker_consumer(&self, provider: &str) -> String {
        format!("worker-{provider}")
    }

    /// Where batch jobs are submitted (HTTP API and native clients).
    pub fn batch_submit(&self) -> String {
        format!("{}.batch.submit", self.ns)
    }

    /// Where the dispatcher publishes a batch item for `provider` (batch request stream).
    pub fn batch_request(&self, provider: &str, batch_id: &str) -> String {
        format!("{}.breq.{provider}.{batch_id}", self.ns)
    }

    /// Filter for every batch item to one provider: its batch consumer's filter.
    pub fn batch_request_filter(&self, provider: &str) -> String {
        format!("{}.breq.{provider}.>", self.ns)
    }

    /// Where a worker stores the answer of item `index` of a batch.
    pub fn batch_result(&self, batch_id: &str, index: u32) -> String {
        format!("{}.batch.result.{batch_id}.{index}", self.ns)
    }

    /// Every result of one batch.
    pub fn batch_results_of(&self, batch_id: &str) -> String {
        format!("{}.batch.result.{batch_id}.*", self.ns)
    }

    /// Where a batch's completion is announced.
    pub fn batch_done(&self, batch_id: &str) -> String {
        format!("{}.batch.done.{batch_id}", self.ns)
    }

    /// Name of the work-queue stream of batch jobs (`<ns>.batch.submit`).
    pub fn batch_jobs_stream(&self) -> String {
        format!("{}_BATCH_JOBS", self.stream_prefix)
    }

    /// Name of the work-queue stream of batch items (`<ns>.breq.>`).
    pub fn batch_request_stream(&self) -> String {
        format!("{}_BATCH_REQ", self.stream_prefix)
    }

    /// Name of the stream of batch item results (`<ns>.batch.result.>`).
    pub fn batch_results_stream(&self) -> String {
        format!("{}_BATCH_RESULTS", self.stream_prefix)
    }

    /// Name of the stream of completion announcements (`<ns>.batch.done.>`).
    pub fn batch_done_stream(&self) -> String {
        format!("{}_BATCH_DONE", self.stream_prefix)
    }

    /// Name of the KV bucket of batch records.
    pub fn batches_bucket(&self) -> String {
        format!("{}_BATCHES", self.stream_prefix)
    }

    /// Name of the object store of batch input and output files.
    pub fn files_bucket(&self) -> String {
        format!("{}_FILES", self.stream_prefix)
    }

    /// Name of the object store of large payloads (generated images).
    pub fn blobs_bucket(&self) -> String {
        format!("{}_BLOBS", self.stream_prefix)
    }

    /// Name of the durable consumer of one provider's batch items.
    pub fn batch_worker_consumer(&self, provider: &str) -> String {
        format!("batch-{provider}")
    }

    /// Name of the dispatchers' durable consumer of batch jobs.
    pub fn dispatcher_consumer(&self) -> String {
        "dispatcher".into()
    }

    /// The subjects of the four batch streams: jobs, items, results, announcements.
    pub fn batch_filters(&self) -> [String; 4] {
        [
            self.batch_submit(),
            format!("{}.breq.>", self.ns),
            format!("{}.batch.result.>", self.ns),
            format!("{}.batch.done.>", self.ns),
        ]
    }
}

impl Subjects {
    /// The request id at the end of a reply or cancel subject, if it is one.
    pub fn request_id_of(subject: &str) -> Option<Uuid> {
        Uuid::try_parse(subject.rsplit('.').next()?).ok()
    }
}

/// True when `s` can stand as one subject token and in a stream name:
/// ASCII letters, digits, `_` and `-`, 1 to 64 characters.
pub fn is_valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The longest subject (or KV key) Switchyard publishes. NATS closes the whole
/// connection on a control line past its limit (4 KiB by default), which would
/// cut every request of the process; nothing near that is ever sent.
pub const MAX_SUBJECT_LEN: usize = 512;

/// True when `s` is a subject the bus may publish to: at most
/// [`MAX_SUBJECT_LEN`] bytes, non-empty dot-separated tokens, printable ASCII
/// without spaces (so a control line cannot be broken or split).
pub fn is_valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBJECT_LEN
        && s.bytes().all(|b| b.is_ascii_graphic())
        && s.split('.').all(|t| !t.is_empty())
}

/// The subject token for a route (model) name: characters a subject cannot hold
/// (`.`, `*`, `>`, spaces, …) become `_`, so `gpt-4.1` routes on `gpt-4_1`.
pub fn route_token(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_follow_the_architecture() {
        let s = Subjects::new("sy");
        let id = Uuid::now_v7();
        assert_eq!(s.request("openai", "gpt-4o"), "sy.req.openai.gpt-4o");
        assert_eq!(s.request_filter("openai"), "sy.req.openai.>");
        assert_eq!(s.request_stream(), "SY_REQ");
        assert_eq!(s.usage_stream(), "SY_USAGE");
        assert_eq!(s.batch_submit(), "sy.batch.submit");
        assert_eq!(s.batch_done("batch_1"), "sy.batch.done.batch_1");
        assert_eq!(
            s.batch_request("openai", "batch_1"),
            "sy.breq.openai.batch_1"
        );
        assert_eq!(s.batch_result("batch_1", 7), "sy.batch.result.batch_1.7");
        let reply = s.reply("ing1", id);
        assert!(reply.starts_with("sy.reply.ing1."));
        assert_eq!(Subjects::request_id_of(&reply), Some(id));
        assert_eq!(Subjects::request_id_of(&s.cancel(id)), Some(id));
        assert_eq!(Subjects::request_id_of("sy.reply.ing1.nope"), None);
    }

    #[test]
    fn namespaces_isolate_streams() {
        let s = Subjects::new("t-1a2b");
        assert_eq!(s.request_stream(), "T_1A2B_REQ");
        assert_eq!(s.request_all(), "t-1a2b.req.>");
    }

    #[test]
    fn route_tokens_are_valid_tokens() {
        assert_eq!(route_token("gpt-4.1"), "gpt-4_1");
        assert_eq!(route_token("a b*c>d"), "a_b_c_d");
        assert!(is_valid_token(&route_token("claude-3.5-sonnet")));
        assert!(!is_valid_token("a.b"));
        assert!(!is_valid_token(""));
    }
}
