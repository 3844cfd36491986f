//! The canonical image generation request (OpenAI's `/v1/images/generations`
//! shape) and the images that come back: small ones inline in their reply
//! frame, larger ones in the blob store (`<NS>_BLOBS`, JetStream's object
//! store), so that no message comes near the server's payload limit.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Base64 images up to this many bytes ride in their reply frame; larger
/// ones go to the blob store and the frame names them.
pub const INLINE_IMAGE_B64_BYTES: usize = 256 * 1024;

/// An image generation request, validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagesRequest {
    /// The model (route) the client asked for.
    pub model: String,
    /// What to draw.
    pub prompt: String,
    /// How many images (1 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// `WIDTHxHEIGHT` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The provider's quality setting (`low`, `medium`, `high`, `hd`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<String>,
    /// `url` or `b64_json`: how the client wants the images (the ingress
    /// answers either way, whatever the provider sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
    /// The end user's id (a per-org pseudonym by the time it travels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Every other field, passed through to OpenAI-compatible providers.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
    /// Set for an edit (`/v1/images/edits`): the images to change and the
    /// mask, in the blob store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<ImageEdit>,
}

/// What an edit changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageEdit {
    /// The images, in the client's order.
    pub images: Vec<crate::audio::Upload>,
    /// Where to change them (transparent areas), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<crate::audio::Upload>,
}

impl ImagesRequest {
    /// How many images are asked for.
    pub fn count(&self) -> u32 {
        self.n.unwrap_or(1).max(1)
    }

    /// The output tokens a provider billing images in tokens (OpenAI's
    /// gpt-image-1) is likely to charge, per its published square-image
    /// figures: 272 at `low`, 4,160 at `high`, 1,056 otherwise; times `n`.
    /// An estimate for choosing a target, never a bound (budgets reserve more).
    pub fn expected_output_tokens(&self) -> u64 {
        let each = match self.quality.as_deref() {
            Some("low") => 272,
            Some("high" | "hd") => 4_160,
            _ => 1_056,
        };
        each * u64::from(self.count())
    }
}

/// One generated image, as it travels: exactly one of `url` (the
/// provider's own link), `b64_json` (inline) and `blob` (a blob store
/// object's name) is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageData {
    /// The provider's link to the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The image, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b64_json: Option<String>,
    /// The blob store object holding the image's bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// The image's media type (`image/png`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The prompt the provider rewrote the client's into, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revised_prompt: Option<String>,
}

/// One image of an answer on the reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFrame {
    /// Position in the reply, from 0.
    pub seq: u32,
    /// Present on the first frame only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartInfo>,
    /// Which image of the answer, from 0.
    pub index: u32,
    /// The image.
    pub image: ImageData,
}
