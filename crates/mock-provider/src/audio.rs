//! Speech to text for the mock: a deterministic transcript of the upload's
//! bytes, its length from a WAV header (else 16,000 bytes a second), in
//! each of OpenAI's response formats.

use serde_json::json;

/// The transcript of `audio`: eight words picked by a hash of its bytes.
pub fn transcript(audio: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in audio {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    crate::reply_text(&format!("audio {h:016x}"), 8, 0)
}

/// The audio's length in seconds: a PCM WAV's from its header, anything
/// else at 16,000 bytes a second.
pub fn seconds(audio: &[u8]) -> f64 {
    let le16 = |at: usize| {
        audio
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let le32 = |at: usize| {
        audio
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if audio.starts_with(b"RIFF")
        && audio.get(8..12) == Some(b"WAVE")
        && let (Some(channels), Some(rate), Some(bits)) = (le16(22), le32(24), le16(34))
    {
        let per_second = f64::from(rate) * f64::from(channels) * f64::from(bits) / 8.0;
        if per_second > 0.0 {
            return audio.len().saturating_sub(44) as f64 / per_second;
        }
    }
    audio.len() as f64 / 16_000.0
}

/// A PCM WAV (16 kHz, mono, 16-bit) of `seconds` of a tone: test audio.
pub fn wav(seconds: f64) -> Vec<u8> {
    let samples = (seconds * 16_000.0) as usize;
    let data = samples * 2;
    let mut out = Vec::with_capacity(44 + data);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&((36 + data) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data as u32).to_le_bytes());
    for i in 0..samples {
        let v = ((i as f64 * 440.0 * std::f64::consts::TAU / 16_000.0).sin() * 8_000.0) as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn timestamp(seconds: f64, separator: char) -> String {
    let ms = (seconds * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}{separator}{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The answer body and its media type for `format`.
pub fn answer(audio: &[u8], format: &str, translate: bool) -> (String, &'static str) {
    let text = transcript(audio);
    let secs = seconds(audio);
    match format {
        "text" => (format!("{text}\n"), "text/plain; charset=utf-8"),
        "srt" => (
            format!(
                "1\n{} --> {}\n{text}\n\n",
                timestamp(0.0, ','),
                timestamp(secs, ',')
            ),
            "text/plain; charset=utf-8",
        ),
        "vtt" => (
            format!(
                "WEBVTT\n\n{} --> {}\n{text}\n\n",
                timestamp(0.0, '.'),
                timestamp(secs, '.')
            ),
            "text/vtt; charset=utf-8",
        ),
        "verbose_json" => (
            json!({"task": if translate { "translate" } else { "transcribe" },
                "language": "english", "duration": secs, "text": text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": secs, "text": text}]})
            .to_string(),
            "application/json",
        ),
        _ => (
            json!({"text": text, "usage": {"type": "duration", "seconds": secs.ceil() as u64}})
                .to_string(),
            "application/json",
        ),
    }
}

/// Unused fields of a form, for the answer's checks.
pub fn known_format(format: &str) -> bool {
    matches!(format, "json" | "text" | "srt" | "vtt" | "verbose_json")
}

/// The speech the mock makes of `text` (directives removed) in `format`:
/// a WAV of 50 ms a character for `wav` and `pcm`, else an MP3-like byte
/// string (an ID3 tag, then 400 bytes a character drawn from the text).
pub fn speech_bytes(text: &str, format: &str) -> Vec<u8> {
    let (text, _) = crate::extract(text);
    let chars = text.chars().count().max(1);
    if format == "wav" || format == "pcm" {
        return wav(chars as f64 * 0.05);
    }
    let mut out = b"ID3\x04\x00\x00\x00\x00\x00\x00".to_vec();
    let mut state = crate::seed(&text, 0);
    for _ in 0..chars * 400 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        out.push((state >> 56) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn a_wav_says_its_length_and_every_format_carries_the_transcript() {
        let a = wav(2.5);
        assert!((seconds(&a) - 2.5).abs() < 1e-9);
        let text = transcript(&a);
        assert_eq!(text.split_whitespace().count(), 8);
        for f in ["json", "text", "srt", "vtt", "verbose_json"] {
            assert!(answer(&a, f, false).0.contains(&text), "{f}");
        }
        assert!(answer(&a, "srt", false).0.contains("00:00:02,500"));
        let v: Value = serde_json::from_str(&answer(&a, "json", false).0).unwrap();
        assert_eq!(v["usage"]["seconds"], 3);
    }
}
