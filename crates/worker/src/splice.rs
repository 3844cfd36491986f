//! Fitting a continued stream to what the client already has (mid-stream recovery).

/// How a continued stream's content is fitted to what the client already has.
#[derive(Debug)]
pub(crate) enum Fit {
    /// A fresh answer: nothing to fit.
    Fresh,
    /// The target continues an assistant prefill that lost its trailing
    /// whitespace (`ws`); the continuation's copy of it is dropped once.
    Prefill { ws: String },
    /// The target answers anew: its output is held back until it reproduced
    /// `text` exactly, then the rest flows.
    Splice { text: String, matched: usize },
}

impl Fit {
    /// The part of `piece` to send on; `None` when the answer diverged.
    pub(crate) fn take<'p>(&mut self, piece: &'p str) -> Option<&'p str> {
        match self {
            Fit::Fresh => Some(piece),
            Fit::Prefill { ws } => {
                if piece.is_empty() {
                    return Some(piece);
                }
                let out = piece.strip_prefix(ws.as_str()).unwrap_or(piece);
                ws.clear();
                Some(out)
            }
            Fit::Splice { text, matched } => {
                let rest = &text[*matched..];
                if rest.is_empty() {
                    Some(piece)
                } else if rest.starts_with(piece) {
                    *matched += piece.len();
                    Some("")
                } else if let Some(tail) = piece.strip_prefix(rest) {
                    *matched = text.len();
                    Some(tail)
                } else {
                    None
                }
            }
        }
    }

    /// False while a splice has not yet reproduced everything sent.
    pub(crate) fn caught_up(&self) -> bool {
        match self {
            Fit::Splice { text, matched } => *matched == text.len(),
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splicing_holds_back_until_the_sent_text_is_reproduced() {
        let mut f = Fit::Splice {
            text: "Hello wor".into(),
            matched: 0,
        };
        assert_eq!(f.take("Hel"), Some(""));
        assert!(!f.caught_up());
        assert_eq!(f.take("lo"), Some(""));
        // The piece that completes the sent text carries the first new bytes.
        assert_eq!(f.take(" world"), Some("ld"));
        assert!(f.caught_up());
        assert_eq!(f.take("!"), Some("!"));
        let mut g = Fit::Splice {
            text: "Hello".into(),
            matched: 0,
        };
        assert_eq!(g.take("Help"), None, "diverged");
    }

    #[test]
    fn a_prefill_continuation_drops_the_whitespace_the_prefill_lost_once() {
        let mut f = Fit::Prefill { ws: " ".into() };
        assert_eq!(f.take(""), Some(""));
        assert_eq!(f.take(" next"), Some("next"));
        assert_eq!(f.take(" word"), Some(" word"));
        let mut g = Fit::Prefill { ws: "\n".into() };
        assert_eq!(g.take(" other"), Some(" other"), "kept when it differs");
    }
}
