//! Audio transcription and translation requests (OpenAI's
//! `/v1/audio/transcriptions` and `/v1/audio/translations`, multipart): the
//! upload travels in the blob store, the envelope names it; the answer is
//! one text frame in the format the client asked for.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A file the client uploaded, kept in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// The blob store object holding its bytes.
    pub blob: String,
    /// Its name as the client sent it.
    pub filename: String,
    /// Its media type as the client said, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Its size.
    pub bytes: u64,
}

/// A transcription (`translate` false) or a translation into English.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionRequest {
    /// The model (route) the client asked for.
    pub model: String,
    /// Translate into English instead of transcribing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub translate: bool,
    /// The audio.
    pub file: Upload,
    /// `json` (default), `text`, `srt`, `vtt` or `verbose_json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
    /// The audio's language (ISO-639-1), for transcriptions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Text to guide the model's style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Sampling temperature, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// `word` and/or `segment` (verbose_json only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timestamp_granularities: Vec<String>,
    /// Every other text field, passed through as form fields.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl TranscriptionRequest {
    /// The format the client gets: `json` unless it said otherwise.
    pub fn format(&self) -> &str {
        self.response_format.as_deref().unwrap_or("json")
    }

    /// Seconds of audio at most, from the upload's size at 16 kbit/s (the
    /// least a speech codec uses): more than it is, never less.
    pub fn most_seconds(&self) -> u64 {
        self.file.bytes / 2_000 + 1
    }
}

/// A whole answer that is text (a transcript in json, text, srt, vtt or
/// verbose_json), on the reply subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextFrame {
    /// Position in the reply (0).
    pub seq: u32,
    /// Present on the first frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartInfo>,
    /// Its media type (`application/json`, `text/plain`, `text/vtt`, …).
    pub content_type: String,
    /// The body, as the client gets it.
    pub body: String,
    /// The audio's length in seconds, when known (billed per second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_seconds: Option<f64>,
}

/// Text to speech (OpenAI's `/v1/audio/speech`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeechRequest {
    /// The model (route) the client asked for.
    pub model: String,
    /// The text to speak.
    pub input: String,
    /// The voice: a name, or an object naming a custom one.
    pub voice: Value,
    /// `mp3` (default), `opus`, `aac`, `flac`, `wav` or `pcm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<String>,
    /// 0.25 to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
    /// How to speak (gpt-4o-mini-tts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Every other field, passed through.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

impl SpeechRequest {
    /// Characters to speak (what a per-character price bills).
    pub fn characters(&self) -> u64 {
        self.input.chars().count() as u64
    }

    /// The audio's media type for its format.
    pub fn content_type(&self) -> &'static str {
        match self.response_format.as_deref().unwrap_or("mp3") {
            "opus" => "audio/ogg",
            "aac" => "audio/aac",
            "flac" => "audio/flac",
            "wav" => "audio/wav",
            "pcm" => "audio/pcm",
            _ => "audio/mpeg",
        }
    }
}

/// Part of a binary answer (speech), in order; base64 on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BytesFrame {
    /// Position in the reply, from 0.
    pub seq: u32,
    /// Present on the first frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<crate::StartInfo>,
    /// The bytes, base64 (at most [`BYTES_FRAME_MAX`] before encoding).
    pub data: String,
}

/// The most bytes one [`BytesFrame`] carries (before base64).
pub const BYTES_FRAME_MAX: usize = 64 * 1024;
