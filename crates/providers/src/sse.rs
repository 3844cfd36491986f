//! An incremental server-sent-events parser (the WHATWG event-stream format).
//!
//! Bytes go in as the network delivers them; events come out once complete. Lines
//! are decoded only when whole, so an event or a multi-byte UTF-8 character split
//! across reads is reassembled, never mangled.

/// One event: its type (`event:` field, if any) and its data lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` fields, joined by newlines.
    pub data: String,
}

/// Incremental SSE parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Adds bytes as they arrived from the network.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if the buffered bytes hold one.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let mut start = 0;
        let mut found = None;
        while let Some(rel) = self.buf[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + rel;
            let terminator = if self.buf[end] == b'\r' {
                match self.buf.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    // A lone \r at the end may be the first half of \r\n: wait.
                    None => break,
                }
            } else {
                1
            };
            let line = String::from_utf8_lossy(&self.buf[start..end]).into_owned();
            start = end + terminator;
            if let Some(ev) = self.line(&line) {
                found = Some(ev);
                break;
            }
        }
        self.buf.drain(..start);
        found
    }

    /// At the end of the stream: the last event, even without its closing blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let line = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            if let Some(ev) = self.line(&line) {
                return Some(ev);
            }
        }
        self.dispatch()
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        self.data.take().map(|data| SseEvent { event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(parser: &mut SseParser) -> Vec<SseEvent> {
        std::iter::from_fn(|| parser.next_event()).collect()
    }

    #[test]
    fn events_split_anywhere_reassemble() {
        let text = "event: a\ndata: {\"x\":\"h\u{e9}llo \u{1f600}\"}\n\n: comment\ndata: line1\ndata: line2\r\n\r\ndata: [DONE]\n\n";
        let bytes = text.as_bytes();
        let expected = {
            let mut p = SseParser::new();
            p.push(bytes);
            all(&mut p)
        };
        assert_eq!(expected.len(), 3);
        assert_eq!(expected[0].event.as_deref(), Some("a"));
        assert_eq!(expected[0].data, "{\"x\":\"h\u{e9}llo \u{1f600}\"}");
        assert_eq!(expected[1].data, "line1\nline2");
        assert_eq!(expected[2].data, "[DONE]");
        // Every split point, including inside the multi-byte characters and \r\n.
        for cut in 0..bytes.len() {
            let mut p = SseParser::new();
            p.push(&bytes[..cut]);
            let mut got = all(&mut p);
            p.push(&bytes[cut..]);
            got.extend(all(&mut p));
            assert_eq!(got, expected, "split at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time_works() {
        let text = "data: \u{4f60}\u{597d}\n\ndata: b\n\n";
        let mut p = SseParser::new();
        let mut got = Vec::new();
        for b in text.as_bytes() {
            p.push(std::slice::from_ref(b));
            got.extend(all(&mut p));
        }
        let data: Vec<_> = got.into_iter().map(|e| e.data).collect();
        assert_eq!(data, vec!["\u{4f60}\u{597d}", "b"]);
    }

    #[test]
    fn last_event_without_blank_line_is_flushed_at_end() {
        let mut p = SseParser::new();
        p.push(b"data: tail");
        assert_eq!(p.next_event(), None);
        assert_eq!(p.finish().map(|e| e.data).as_deref(), Some("tail"));
    }
}
