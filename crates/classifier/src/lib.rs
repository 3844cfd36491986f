//! The request classifier: `simple`, `medium`, `complex`, `code` or `image`.
//!
//! Image parts decide `image` structurally; everything else goes through a small
//! multinomial logistic regression trained offline by
//! scripts/classifier/train.py (docs/routing.md) over hashed word n-grams, a
//! static token-embedding mean and structural features of a bounded window of
//! the last user message. The artifact (model/) is compiled into the binary and
//! parsed once ([`Classifier::load`]); inference is deterministic, in-process,
//! allocation-light and takes microseconds.

mod features;

use std::collections::HashMap;

use base64::Engine;
use serde::Deserialize;
use sy_protocol::chat::{ChatRequest, Content, ContentPart, Role};

pub use features::{HASH_DIM, WINDOW};

const MODEL_JSON: &str = include_str!("../model/classifier.json");
const EMBEDDINGS: &[u8] = include_bytes!("../model/embeddings.bin");
const VOCAB: &str = include_str!("../model/vocab.txt");

/// A request class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// A cheap model answers it in a sentence or two.
    Simple,
    /// Ordinary assistant work.
    Medium,
    /// Needs a strong (reasoning) model.
    Complex,
    /// Programming.
    Code,
    /// Image input, or a request to generate an image.
    Image,
}

/// Every class, in the model's order.
pub const CLASSES: [Class; 5] = [
    Class::Simple,
    Class::Medium,
    Class::Complex,
    Class::Code,
    Class::Image,
];

impl Class {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Simple => "simple",
            Class::Medium => "medium",
            Class::Complex => "complex",
            Class::Code => "code",
            Class::Image => "image",
        }
    }

    /// Parses a class name.
    pub fn parse(s: &str) -> Option<Class> {
        CLASSES.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the classifier decided and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The most probable class.
    pub class: Class,
    /// Probability per class, in [`CLASSES`] order.
    pub probs: [f64; 5],
    /// `model`, or `image_part` when an image part decided it.
    pub source: &'static str,
}

/// The artifact could not be read (a build with a broken model/ directory).
#[derive(Debug, thiserror::Error)]
#[error("classifier artifact: {0}")]
pub struct ClassifierError(String);

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
struct Artifact {
    format: u32,
    classes: Vec<String>,
    hash_dim: usize,
    window: usize,
    #[serde(default = "yes")]
    bigrams: bool,
    emb_dims: usize,
    emb_weight: f64,
    dense_weight: f64,
    dense_mean: Vec<f64>,
    dense_std: Vec<f64>,
    bias: Vec<f64>,
    weights_f32_le_base64: String,
    /// Two cumulative binary models sharing out simple/medium/complex.
    #[serde(default)]
    ordinal: Option<OrdinalHead>,
}

#[derive(serde::Deserialize)]
struct OrdinalHead {
    bias: Vec<f64>,
    weights_f32_le_base64: Vec<String>,
}

/// Rows of the weight matrix: five classes, then two ordinal cuts, and one
/// of padding.
const ROWS: usize = 8;

/// One feature's weights for every row: 32 bytes, aligned so that they never
/// straddle a cache line (hashed features are read at random).
#[derive(Clone, Copy, Default)]
#[repr(align(32))]
struct FeatureWeights([f32; ROWS]);

/// The loaded model. Cheap to share (`Arc`); classification takes `&self`.
pub struct Classifier {
    /// Weights, feature-major: `[feature][row]`, rows as in [`ROWS`] (the
    /// ordinal rows zero when the artifact has none).
    weights: Vec<FeatureWeights>,
    features: usize,
    bias: [f64; ROWS],
    ordinal: bool,
    emb_dims: usize,
    bigrams: bool,
    emb_weight: f64,
    dense_weight: f64,
    dense_mean: Vec<f64>,
    dense_std: Vec<f64>,
    /// Dequantised token embeddings, row-major.
    table: Vec<f32>,
    vocab: HashMap<String, u32, features::FnvBuild>,
    unk: u32,
}

impl std::fmt::Debug for Classifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Classifier")
            .field("features", &self.features)
            .field("vocab", &self.vocab.len())
            .finish()
    }
}

impl Classifier {
    /// Parses the artifact compiled into the binary (tens of milliseconds: call
    /// once at start, off the async runtime).
    pub fn load() -> Result<Classifier, ClassifierError> {
        let e = |m: String| ClassifierError(m);
        let a: Artifact = serde_json::from_str(MODEL_JSON).map_err(|x| e(x.to_string()))?;
        let names: Vec<&str> = CLASSES.iter().map(|c| c.as_str()).collect();
        if a.format != 1 || a.classes != names || a.hash_dim != HASH_DIM || a.window != WINDOW {
            return Err(e(
                "the artifact does not match this build's feature code".into()
            ));
        }
        if a.dense_mean.len() != features::DENSE || a.dense_std.len() != features::DENSE {
            return Err(e("dense feature count mismatch".into()));
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a.weights_f32_le_base64)
            .map_err(|x| e(x.to_string()))?;
        let nfeat = HASH_DIM + a.emb_dims + features::DENSE;
        if raw.len() != 5 * nfeat * 4 {
            return Err(e(format!(
                "{} weight bytes, expected {}",
                raw.len(),
                5 * nfeat * 4
            )));
        }
        let floats = |raw: &[u8]| -> Vec<f32> {
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let mut row_major = floats(&raw);
        let mut extra_bias = [0.0f64; 2];
        if let Some(o) = &a.ordinal {
            if o.bias.len() != 2 || o.weights_f32_le_base64.len() != 2 {
                return Err(e("the ordinal head needs two cuts".into()));
            }
            for (k, w) in o.weights_f32_le_base64.iter().enumerate() {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(w)
                    .map_err(|x| e(x.to_string()))?;
                if raw.len() != nfeat * 4 {
                    return Err(e("ordinal weight count mismatch".into()));
                }
                row_major.extend(floats(&raw));
                extra_bias[k] = o.bias[k];
            }
        } else {
            row_major.extend(std::iter::repeat_n(0.0, 2 * nfeat));
        }
        // Feature-major, so one feature's weights share a cache line.
        let mut weights = vec![FeatureWeights::default(); nfeat];
        for c in 0..7 {
            for (f, w) in weights.iter_mut().enumerate() {
                w.0[c] = row_major[c * nfeat + f];
            }
        }
        // embeddings.bin: "SYEMB001", n u32, dims u32, n f32 scales, n*dims i8.
        let bad = || e("embeddings.bin is malformed".into());
        if EMBEDDINGS.len() < 16 || &EMBEDDINGS[..8] != b"SYEMB001" {
            return Err(bad());
        }
        let u32_at = |i: usize| {
            u32::from_le_bytes([
                EMBEDDINGS[i],
                EMBEDDINGS[i + 1],
                EMBEDDINGS[i + 2],
                EMBEDDINGS[i + 3],
            ]) as usize
        };
        let (n, dims) = (u32_at(8), u32_at(12));
        if dims != a.emb_dims || EMBEDDINGS.len() != 16 + 4 * n + n * dims {
            return Err(bad());
        }
        let scales = &EMBEDDINGS[16..16 + 4 * n];
        let rows = &EMBEDDINGS[16 + 4 * n..];
        let mut table = Vec::with_capacity(n * dims);
        for r in 0..n {
            let s = f32::from_le_bytes([
                scales[4 * r],
                scales[4 * r + 1],
                scales[4 * r + 2],
                scales[4 * r + 3],
            ]);
            for &q in &rows[r * dims..(r + 1) * dims] {
                table.push(f32::from(q as i8) * s);
            }
        }
        let vocab: HashMap<String, u32, features::FnvBuild> = VOCAB
            .split('\n')
            .take(n)
            .enumerate()
            .map(|(i, t)| (t.to_owned(), i as u32))
            .collect();
        let unk = *vocab
            .get("[UNK]")
            .ok_or_else(|| e("no [UNK] in vocab".into()))?;
        let five: [f64; 5] = a
            .bias
            .clone()
            .try_into()
            .map_err(|_| e("bias must have 5 values".into()))?;
        let mut bias = [0.0f64; ROWS];
        bias[..5].copy_from_slice(&five);
        bias[5..7].copy_from_slice(&extra_bias);
        Ok(Classifier {
            weights,
            features: nfeat,
            bias,
            ordinal: a.ordinal.is_some(),
            emb_dims: dims,
            bigrams: a.bigrams,
            emb_weight: a.emb_weight,
            dense_weight: a.dense_weight,
            dense_mean: a.dense_mean,
            dense_std: a.dense_std,
            table,
            vocab,
            unk,
        })
    }

    /// Classifies one text (the last user message) with the conversation's turn
    /// count and whether tools were offered.
    pub fn classify_text(&self, text: &str, turns: usize, tools: bool) -> Prediction {
        let win = features::Tokens::window(text);
        let mut logits = self.bias;
        let w = |c: usize, f: usize| f64::from(self.weights[f].0[c]);
        for (b, v) in features::hashed(win.iter(), self.bigrams) {
            for (c, l) in logits.iter_mut().enumerate() {
                *l += w(c, b) * v;
            }
        }
        let mut ids = Vec::with_capacity(win.count() * 2);
        features::wordpiece(win.iter(), &self.vocab, self.unk, &mut ids);
        if !ids.is_empty() {
            let mut mean = vec![0.0f64; self.emb_dims];
            for &id in &ids {
                let row =
                    &self.table[id as usize * self.emb_dims..(id as usize + 1) * self.emb_dims];
                for (m, x) in mean.iter_mut().zip(row) {
                    *m += f64::from(*x);
                }
            }
            let n = ids.len() as f64;
            mean.iter_mut().for_each(|m| *m /= n);
            let norm = mean.iter().map(|m| m * m).sum::<f64>().sqrt();
            if norm > 0.0 {
                for (j, m) in mean.iter().enumerate() {
                    let v = m / norm * self.emb_weight;
                    for (c, l) in logits.iter_mut().enumerate() {
                        *l += w(c, HASH_DIM + j) * v;
                    }
                }
            }
        }
        let (d, kw, ex) = features::structure(text, &win, turns, tools);
        for (k, x) in d.iter().chain(&kw).chain(&ex).enumerate() {
            let v = (x - self.dense_mean[k]) / self.dense_std[k] * self.dense_weight;
            for (c, l) in logits.iter_mut().enumerate() {
                *l += w(c, HASH_DIM + self.emb_dims + k) * v;
            }
        }
        let five = [logits[0], logits[1], logits[2], logits[3], logits[4]];
        let max = five.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut probs = five.map(|l| (l - max).exp());
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.ordinal {
            // P(harder than simple), P(harder than medium) share out the text mass.
            let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
            let g0 = sigmoid(logits[5]);
            let g1 = sigmoid(logits[6]).min(g0);
            let text = probs[0] + probs[1] + probs[2];
            probs[0] = text * (1.0 - g0);
            probs[1] = text * (g0 - g1);
            probs[2] = text * g1;
        }
        let best = (0..5).fold(0, |b, i| if probs[i] > probs[b] { i } else { b });
        Prediction {
            class: CLASSES[best],
            probs,
            source: "model",
        }
    }

    /// Classifies a chat request: image parts make it `image`; otherwise the
    /// model reads the last user message.
    pub fn classify(&self, req: &ChatRequest) -> Prediction {
        let has_image = req.messages.iter().any(|m| {
            matches!(&m.content, Some(Content::Parts(parts))
                if parts.iter().any(|p| matches!(p, ContentPart::ImageUrl { .. })))
        });
        if has_image {
            let mut probs = [0.0; 5];
            probs[4] = 1.0;
            return Prediction {
                class: Class::Image,
                probs,
                source: "image_part",
            };
        }
        let text = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.text())
            .unwrap_or_default();
        let tools = req.tools.as_ref().is_some_and(|t| !t.is_empty());
        self.classify_text(&text, req.messages.len(), tools)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    #[allow(clippy::excessive_precision)]
    fn extra_features_match_the_script() {
        // features.py's extra() on the same texts (printed by the script).
        let long = format!("{} A. option? {}end?", "x".repeat(3000), "y. ".repeat(400));
        let cases: [(&str, [f64; 13]); 6] = [
            (
                "Write a poem about 3 cats and 12 dogs. Make it short!",
                [
                    1.098612288668,
                    1.504077396776,
                    0.0,
                    0.0,
                    0.0,
                    1.098612288668,
                    0.285714285714,
                    1.0,
                    0.0,
                    1.0,
                    0.142857142857,
                    1.098612288668,
                    0.142857142857,
                ],
            ),
            (
                "What is 2+2?\nA) 3\n(B) 4\nC: 5\n- first item\n* second\n\u{2022} third\n1. numbered\n2) again  ",
                [
                    1.098612288668,
                    1.38629436112,
                    1.38629436112,
                    0.0,
                    1.791759469228,
                    1.791759469228,
                    0.103448275862,
                    0.0,
                    1.0,
                    0.862068965517,
                    0.379310344828,
                    std::f64::consts::LN_2,
                    0.241379310345,
                ],
            ),
            (
                "  ...hello, world... is this it?  \t",
                [
                    1.098612288668,
                    1.824549292051,
                    0.0,
                    1.0,
                    0.0,
                    0.0,
                    0.230769230769,
                    0.0,
                    0.0,
                    0.615384615385,
                    0.615384615385,
                    0.0,
                    0.0,
                ],
            ),
            ("", [0.0; 13]),
            (
                "\u{dc}ber stra\u{df}e \u{6771}\u{4eac} \u{2713} 42 42 0042. Done",
                [
                    std::f64::consts::LN_2,
                    1.446918982936,
                    0.0,
                    0.0,
                    0.0,
                    1.098612288668,
                    0.0,
                    0.0,
                    0.0,
                    0.9,
                    0.2,
                    1.609437912434,
                    0.3,
                ],
            ),
            (
                &long,
                [
                    5.834810737063,
                    1.79078433507,
                    0.0,
                    1.0,
                    0.0,
                    0.0,
                    0.00390625,
                    0.0,
                    0.0,
                    0.02734375,
                    0.49609375,
                    0.0,
                    0.0,
                ],
            ),
        ];
        for (text, want) in cases {
            let got = features::extra(text, &features::Tokens::window(text));
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!((g - w).abs() < 1e-9, "{text:.40?} feature {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn keyword_features_match_the_script() {
        // features.py's keywords() on the same texts (printed by the script).
        let long = format!(
            "implementation implementations Python3 PYTHON json.loads(x) {} sql",
            "word ".repeat(300)
        );
        let (l2, l3, l5) = (std::f64::consts::LN_2, 1.098612288668, 1.609437912434);
        let cases: [(&str, [f64; 10]); 5] = [
            (
                "How do I merge two dicts in pandas? Show me the code.",
                [l2, l3, 0.0, 0.0, l2, 0.0, 0.0, l3, 0.0, 0.142857142857],
            ),
            (
                "Hi! What is the total sum? Write a story; you must prove it without any error.",
                [l2, l2, 0.0, l3, l2, l3, l3, l3, 0.0, 0.05],
            ),
            ("", [0.0; 10]),
            (
                &long,
                [0.0, l5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.015625],
            ),
            (
                "\u{dc}ber stra\u{df}e \u{6771}\u{4eac} \u{2713} 42 code",
                [0.0, l2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, l2, 0.142857142857],
            ),
        ];
        for (text, want) in cases {
            let got = features::keywords(text, &features::Tokens::window(text));
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                assert!((g - w).abs() < 1e-9, "{text:.40?} feature {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn reproduces_the_training_scripts_predictions() {
        let c = Classifier::load().unwrap();
        let sample = include_str!("../model/sample.jsonl");
        let mut n = 0;
        for line in sample.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = v["text"].as_str().unwrap();
            let want: Vec<f64> = serde_json::from_value(v["probs"].clone()).unwrap();
            let got = c.classify_text(text, 1, false);
            for (g, w) in got.probs.iter().zip(&want) {
                assert!(
                    (g - w).abs() < 1e-3,
                    "{text:?}: {:?} vs {want:?}",
                    got.probs
                );
            }
            n += 1;
        }
        assert!(n >= 50, "the sample has {n} rows");
    }

    #[test]
    fn the_fast_window_tokenizer_matches_the_reference() {
        for text in [
            "Hello, World! x=1; ÀÉÎ Straße 東京タワー\u{1}ctrl\ttab",
            "ΣΊΣΥΦΟΣ. ends in sigma",
            &"a b c ".repeat(400),
        ] {
            let all = features::basic_tokens(text);
            let want: Vec<&str> = if all.len() <= 2 * WINDOW {
                all.iter().map(String::as_str).collect()
            } else {
                all[..WINDOW]
                    .iter()
                    .chain(&all[all.len() - WINDOW..])
                    .map(String::as_str)
                    .collect()
            };
            let got = features::Tokens::window(text);
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{text:?}");
        }
    }

    #[test]
    fn image_parts_decide_image_and_text_is_classified() {
        let c = Classifier::load().unwrap();
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "auto", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
        }))
        .unwrap();
        let p = c.classify(&req);
        assert_eq!((p.class, p.source), (Class::Image, "image_part"));
        let code = c.classify_text(
            "Write a Python function that reverses a linked list.",
            1,
            false,
        );
        assert_eq!(code.class, Class::Code);
        let img = c.classify_text(
            "Generate an image of a red fox in the snow, watercolor style",
            1,
            false,
        );
        assert_eq!(img.class, Class::Image);
        let long = "word ".repeat(5000);
        let p = c.classify_text(&long, 1, false);
        assert!((p.probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}
