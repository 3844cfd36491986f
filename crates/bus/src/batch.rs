//! The batch side of the bus: the streams, the KV bucket of batch records, the
//! object store of files, and typed publishes for jobs, results and announcements.
//!
//! | stream / bucket | subjects | retention |
//! |---|---|---|
//! | `<NS>_BATCH_JOBS` | `<ns>.batch.submit` | work queue: a job stays until its batch ended |
//! | `<NS>_BATCH_REQ` | `<ns>.breq.<provider>.<batch>` | work queue, dedup over the completion window |
//! | `<NS>_BATCH_RESULTS` | `<ns>.batch.result.<batch>.<index>` | limits; purged once the output file is written |
//! | `<NS>_BATCH_DONE` | `<ns>.batch.done.<batch>` | limits, 7 days |
//! | `<NS>_BATCHES` (KV) | key = batch id | the batch record |
//! | `<NS>_FILES` (object store) | name = file id | input and output files |

use std::time::Duration;

use async_nats::jetstream::{self, consumer, object_store, stream};
use sy_protocol::UsageEvent;
use sy_protocol::batch::{BatchDone, BatchJob, BatchResult, COMPLETION_WINDOW_SECS};

use crate::{Bus, BusError, encode};

/// How long the dispatcher may go without a sign of life before its jobs go to another.
pub const JOB_ACK_WAIT: Duration = Duration::from_secs(15);

/// The batch request stream remembers item ids this long (longer than any batch runs).
const ITEM_DEDUP: Duration = Duration::from_secs(COMPLETION_WINDOW_SECS + 3600);

/// Results and announcements are kept at most this long.
const RESULT_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

impl Bus {
    /// Creates (or updates) the four batch streams.
    pub async fn ensure_batch_streams(&self) -> Result<(), BusError> {
        let s = &self.subjects;
        let [jobs, items, results, done] = s.batch_filters();
        let specs = [
            (
                s.batch_jobs_stream(),
                jobs,
                stream::RetentionPolicy::WorkQueue,
                Duration::from_secs(2 * COMPLETION_WINDOW_SECS),
                Duration::from_secs(120),
                "Switchyard batch jobs (acked when the batch ended)",
            ),
            (
                s.batch_request_stream(),
                items,
                stream::RetentionPolicy::WorkQueue,
                ITEM_DEDUP,
                ITEM_DEDUP,
                "Switchyard batch items waiting for a worker",
            ),
            (
                s.batch_results_stream(),
                results,
                stream::RetentionPolicy::Limits,
                RESULT_MAX_AGE,
                Duration::from_secs(3600),
                "Switchyard batch item results",
            ),
            (
                s.batch_done_stream(),
                done,
                stream::RetentionPolicy::Limits,
                RESULT_MAX_AGE,
                Duration::from_secs(3600),
                "Switchyard batch completion announcements",
            ),
        ];
        for (name, subject, retention, max_age, duplicate_window, description) in specs {
            self.ensure_stream(
                name,
                subject,
                retention,
                max_age,
                duplicate_window,
                description,
            )
            .await?;
        }
        Ok(())
    }

    /// The KV bucket of batch records (key = batch id); records expire after `max_age`.
    pub async fn batch_store(&self, max_age: Duration) -> Result<jetstream::kv::Store, BusError> {
        self.ensure_kv(
            self.subjects.batches_bucket(),
            "Switchyard batch records (status, counts, owner)",
            max_age,
        )
        .await
    }

    /// The object store of batch files; files expire after `max_age`.
    pub async fn file_store(
        &self,
        max_age: Duration,
    ) -> Result<object_store::ObjectStore, BusError> {
        self.ensure_object_store(
            self.subjects.files_bucket(),
            "Switchyard batch input and output files",
            max_age,
        )
        .await
    }

    /// An object store (created, or opened as it is when it exists with
    /// other settings).
    pub(crate) async fn ensure_object_store(
        &self,
        bucket: String,
        description: &str,
        max_age: Duration,
    ) -> Result<object_store::ObjectStore, BusError> {
        let config = object_store::Config {
            bucket: bucket.clone(),
            description: Some(description.into()),
            max_age,
            storage: stream::StorageType::File,
            num_replicas: self.config.replicas,
            ..Default::default()
        };
        let created = crate::set_up(&format!("object store {bucket}"), || {
            self.admin.create_object_store(config.clone())
        })
        .await;
        match created {
            Ok(store) => Ok(store),
            // Created before with other settings: use it as it is.
            Err(create) => self
                .js
                .get_object_store(&bucket)
                .await
                .map_err(|e| BusError::Setup(format!("object store {bucket}: {create}; {e}"))),
        }
    }

    /// Submits a batch job on `<ns>.batch.submit` (stored; `msg_id` dedups a repeat).
    pub async fn publish_batch_job(&self, job: &BatchJob, msg_id: &str) -> Result<(), BusError> {
        self.publish_stored(self.subjects.batch_submit(), msg_id, encode(job)?)
            .await
    }

    /// Stores an item's result; a repeat for the same item is dropped.
    pub async fn publish_batch_result(&self, result: &BatchResult) -> Result<(), BusError> {
        let msg_id = format!("{}.{}", result.batch_id, result.index);
        self.publish_stored(
            self.subjects.batch_result(&result.batch_id, result.index),
            &msg_id,
            encode(result)?,
        )
        .await
    }

    /// JetStream's announcements of batch items whose deliveries ran out
    /// (`max_deliver`): each names the item's stream sequence (`stream_seq`).
    pub async fn follow_exhausted_batch_items(&self) -> Result<async_nats::Subscriber, BusError> {
        let subject = format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
            self.subjects.batch_request_stream()
        );
        self.client
            .subscribe(subject)
            .await
            .map_err(|e| BusError::Setup(format!("max-deliveries advisories: {e}")))
    }

    /// Message `seq` of the batch request stream; `None` when it is gone.
    pub async fn batch_request(&self, seq: u64) -> Result<Option<bytes::Bytes>, BusError> {
        let stream = self.batch_request_stream().await?;
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m.payload)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(BusError::Publish(format!("reading item {seq}: {e}"))),
        }
    }

    /// Removes message `seq` from the batch request stream (gone already is fine).
    pub async fn drop_batch_request(&self, seq: u64) -> Result<(), BusError> {
        let stream = self.batch_request_stream().await?;
        match stream.delete_message(seq).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.kind(), stream::DeleteMessageErrorKind::JetStream(ref j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND) =>
            {
                Ok(())
            }
            Err(e) => Err(BusError::Publish(format!("removing item {seq}: {e}"))),
        }
    }

    async fn batch_request_stream(&self) -> Result<stream::Stream<stream::Info>, BusError> {
        self.js
            .get_stream(self.subjects.batch_request_stream())
            .await
            .map_err(|e| BusError::Setup(format!("batch request stream: {e}")))
    }

    /// Whether item `index` has a stored result: `None` when not yet, else the
    /// usage event stored with it (`Some(None)` for a result stored without
    /// one, e.g. an error no call stands behind).
    pub async fn batch_result_usage(
        &self,
        batch_id: &str,
        index: u32,
    ) -> Result<Option<Option<UsageEvent>>, BusError> {
        /// Only the part of a result that is needed here.
        #[derive(serde::Deserialize)]
        struct Stored {
            #[serde(
                default,
                deserialize_with = "sy_protocol::legacy::optional_usage_event"
            )]
            usage: Option<UsageEvent>,
        }
        let stream = self
            .js
            .get_stream_no_info(self.subjects.batch_results_stream())
            .await
            .map_err(|e| BusError::Setup(format!("results stream: {e}")))?;
        match stream
            .get_last_raw_message_by_subject(&self.subjects.batch_result(batch_id, index))
            .await
        {
            Ok(m) => match serde_json::from_slice::<Stored>(&m.payload) {
                Ok(stored) => Ok(Some(stored.usage)),
                Err(e) => {
                    tracing::warn!(batch = batch_id, index, error = %e, "A stored batch result's usage is unreadable.");
                    Ok(Some(None))
                }
            },
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(BusError::Publish(format!("reading a batch result: {e}"))),
        }
    }

    /// Every stored result of a batch, from the first, then each new one as it
    /// is stored: an ordered consumer, and how many results it held when made.
    pub async fn follow_batch_results(
        &self,
        batch_id: &str,
    ) -> Result<(u64, consumer::pull::Ordered), BusError> {
        let stream = self
            .js
            .get_stream_no_info(self.subjects.batch_results_stream())
            .await
            .map_err(|e| BusError::Setup(format!("results stream: {e}")))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subjects.batch_results_of(batch_id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Setup(format!("results of {batch_id}: {e}")))?;
        let stored = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::Setup(format!("results of {batch_id}: {e}")))?;
        Ok((stored, messages))
    }

    /// Drops a batch's results (its files hold them now).
    pub async fn purge_batch_results(&self, batch_id: &str) -> Result<(), BusError> {
        let stream = self
            .js
            .get_stream_no_info(self.subjects.batch_results_stream())
            .await
            .map_err(|e| BusError::Setup(format!("results stream: {e}")))?;
        stream
            .purge()
            .filter(self.subjects.batch_results_of(batch_id))
            .await
            .map(|_| ())
            .map_err(|e| BusError::Publish(format!("purging results of {batch_id}: {e}")))
    }

    /// Announces a batch's end on `<ns>.batch.done.<id>` (stored, once).
    pub async fn publish_batch_done(&self, done: &BatchDone) -> Result<(), BusError> {
        let id = &done.batch.id;
        self.publish_stored(
            self.subjects.batch_done(id),
            &format!("done-{id}"),
            encode(done)?,
        )
        .await
    }

    /// Creates (or updates) the durable consumer of `provider`'s batch items;
    /// `cap` is the cluster-wide number of batch items in flight to it, and an
    /// item is given up after `max_deliver` deliveries (its batch is told: see
    /// [`Bus::follow_exhausted_batch_items`]).
    pub async fn ensure_batch_worker_consumer(
        &self,
        provider: &str,
        cap: u32,
        max_deliver: u32,
    ) -> Result<consumer::PullConsumer, BusError> {
        self.ensure_pull_consumer(
            self.subjects.batch_request_stream(),
            self.subjects.batch_worker_consumer(provider),
            self.subjects.batch_request_filter(provider),
            cap,
            i64::from(max_deliver.max(1)),
            format!("Switchyard batch items for provider {provider}"),
        )
        .await
    }

    /// Creates (or updates) the dispatchers' durable consumer of batch jobs;
    /// `max_running` batches run at once across all dispatchers.
    pub async fn ensure_dispatcher_consumer(
        &self,
        max_running: u32,
    ) -> Result<consumer::PullConsumer, BusError> {
        let jobs = self.subjects.batch_jobs_stream();
        let stream = crate::set_up("batch jobs stream", || self.admin.get_stream(&jobs)).await?;
        let name = self.subjects.dispatcher_consumer();
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: JOB_ACK_WAIT,
            max_ack_pending: i64::from(max_running),
            description: Some("Switchyard batch dispatchers".into()),
            ..Default::default()
        };
        crate::set_up(&format!("consumer {name}"), || {
            stream.create_consumer(config.clone())
        })
        .await
    }
}
