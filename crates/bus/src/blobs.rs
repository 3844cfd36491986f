//! The blob store: payloads too large for one message (generated images),
//! kept in JetStream's object store `<NS>_BLOBS` for an hour. A worker puts
//! an image there and names it in its reply frame; the ingress reads it to
//! answer (inline base64, or a signed link it serves). Names are the
//! request's id, attempt and the image's index: unique, and a retry of a
//! put replaces the same object.

use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use tokio::io::AsyncReadExt;

use crate::{Bus, BusError};

/// How long a blob is kept: the ingress reads it within the request, a
/// client follows a signed link within this.
pub const BLOB_MAX_AGE: Duration = Duration::from_secs(3600);

impl Bus {
    /// The blob store (created, or opened as it is).
    pub async fn blob_store(&self) -> Result<ObjectStore, BusError> {
        self.ensure_object_store(
            self.subjects.blobs_bucket(),
            "Switchyard large payloads (generated images), an hour",
            BLOB_MAX_AGE,
        )
        .await
    }
}

/// Stores `data` as `name` with its media type.
pub async fn put_blob(
    store: &ObjectStore,
    name: &str,
    content_type: &str,
    data: &[u8],
) -> Result<(), BusError> {
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("content_type".to_owned(), content_type.to_owned());
    let meta = ObjectMetadata {
        name: name.to_owned(),
        metadata,
        ..Default::default()
    };
    let mut reader = data;
    store
        .put(meta, &mut reader)
        .await
        .map(|_| ())
        .map_err(|e| BusError::Publish(format!("blob {name}: {e}")))
}

/// A blob's bytes and media type; none when it does not exist (expired,
/// or never stored).
pub async fn get_blob(
    store: &ObjectStore,
    name: &str,
) -> Result<Option<(Vec<u8>, String)>, BusError> {
    let mut object = match store.get(name).await {
        Ok(o) => o,
        Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BusError::Publish(format!("blob {name}: {e}"))),
    };
    let content_type = object
        .info()
        .metadata
        .get("content_type")
        .cloned()
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut data = Vec::with_capacity(object.info().size);
    object
        .read_to_end(&mut data)
        .await
        .map_err(|e| BusError::Publish(format!("blob {name}: {e}")))?;
    Ok(Some((data, content_type)))
}
