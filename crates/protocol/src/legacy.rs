//! Reading the messages that outlive a process: request envelopes waiting in
//! the request streams, usage events in the usage stream and in stored batch
//! results. Before the names were unified (docs/design.md, "Names") an
//! envelope and a usage event said `route` for the model the client asked for,
//! `model` for the upstream model and (the event) `smart_route` for the
//! router's route. A message of that shape is renamed once before it is read;
//! the current shape is read directly, so this costs nothing on the way of a
//! current message.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::{RequestEnvelope, UsageEvent};

/// Reads an envelope, current or older.
pub fn read_envelope(bytes: &[u8]) -> serde_json::Result<RequestEnvelope> {
    read(bytes, upgrade_envelope)
}

/// Reads a usage event, current or older.
pub fn read_usage_event(bytes: &[u8]) -> serde_json::Result<UsageEvent> {
    read(bytes, upgrade_usage_event)
}

/// The usage events of a message: one, or (with
/// [`crate::header::USAGE_ROWS`]) one per line.
pub fn read_usage_events(
    bytes: &[u8],
    rows: bool,
) -> impl Iterator<Item = serde_json::Result<UsageEvent>> + '_ {
    usage_lines(bytes, rows).map(read_usage_event)
}

/// A usage message's events' JSON: the whole payload, or each non-empty line.
pub fn usage_lines(bytes: &[u8], rows: bool) -> impl Iterator<Item = &[u8]> {
    let mut lines = bytes.split(move |b| rows && *b == b'\n');
    std::iter::from_fn(move || lines.find(|l| !rows || !l.is_empty()))
}

/// For `#[serde(deserialize_with)]` on an optional usage event stored inside
/// another message (a batch result).
pub fn optional_usage_event<'de, D: Deserializer<'de>>(
    de: D,
) -> Result<Option<UsageEvent>, D::Error> {
    let Some(mut v) = Option::<Value>::deserialize(de)? else {
        return Ok(None);
    };
    if let Value::Object(o) = &mut v {
        upgrade_usage_event(o);
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn read<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    upgrade: fn(&mut Map<String, Value>) -> bool,
) -> serde_json::Result<T> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(first) => {
            let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(bytes) else {
                return Err(first);
            };
            if !upgrade(&mut o) {
                return Err(first);
            }
            serde_json::from_value(Value::Object(o)).map_err(|_| first)
        }
    }
}

/// Renames an older envelope's fields; false when it is not one.
fn upgrade_envelope(o: &mut Map<String, Value>) -> bool {
    if o.contains_key("upstream_model") || !o.get("route").is_some_and(Value::is_string) {
        return false;
    }
    rename(o, "model", "upstream_model");
    rename(o, "route", "model");
    true
}

/// Renames an older usage event's fields; false when it is not one.
fn upgrade_usage_event(o: &mut Map<String, Value>) -> bool {
    if o.contains_key("upstream_model") || !o.get("route").is_some_and(Value::is_string) {
        return false;
    }
    rename(o, "model", "upstream_model");
    rename(o, "route", "model");
    rename(o, "smart_route", "route");
    true
}

fn rename(o: &mut Map<String, Value>, from: &str, to: &str) {
    if let Some(v) = o.remove(from) {
        o.insert(to.to_owned(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn older_event() -> Value {
        json!({
            "event_id": "e-1", "request_id": "0193a1b2-0000-7000-8000-000000000001",
            "attempt": 1, "received_unix_ms": 1, "dispatched_unix_ms": 2,
            "finished_unix_ms": 3, "key_id": "k", "ingress_id": "i", "worker_id": "w",
            "api": "chat_completions", "route": "auto", "smart_route": "auto:code",
            "provider": "openai", "model": "gpt-4o-mini", "stream": false, "status": "ok",
            "input_tokens": 7, "cached_input_tokens": 0, "cache_write_tokens": 0,
            "output_tokens": 5, "reasoning_tokens": 0, "input_tokens_source": "provider",
            "output_tokens_source": "provider", "queue_wait_ms": 1, "latency_ms": 2,
            "client_disconnected": false,
        })
    }

    #[test]
    fn an_older_usage_event_is_read_under_the_current_names() {
        let e = read_usage_event(&serde_json::to_vec(&older_event()).unwrap()).unwrap();
        assert_eq!(e.model, "auto");
        assert_eq!(e.route.as_deref(), Some("auto:code"));
        assert_eq!(e.upstream_model, "gpt-4o-mini");
        assert_eq!(e.tokens.input_tokens, 7);
        // A current event reads as it is, and the same inside a batch result.
        let again = read_usage_event(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(again, e);
        #[derive(Deserialize)]
        struct Stored {
            #[serde(default, deserialize_with = "optional_usage_event")]
            usage: Option<UsageEvent>,
        }
        let stored: Stored = serde_json::from_value(json!({"usage": older_event()})).unwrap();
        assert_eq!(stored.usage, Some(e));
    }

    #[test]
    fn a_debit_reads_the_ledgers_fields_of_any_event() {
        let mut e = read_usage_event(&serde_json::to_vec(&older_event()).unwrap()).unwrap();
        e.billed_nanos = Some(1_234);
        e.limits = Some(crate::LimitTicket {
            org: "org-1".into(),
            reserved_tokens: 5,
            buckets: vec![("b".into(), 100)],
            budgets: vec![("bal".into(), 0)],
            allowance: Some(("al".into(), 7)),
        });
        let d = crate::UsageDebit::read(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(d.event_id, e.event_id);
        assert_eq!(d.billed_nanos, Some(1_234));
        assert_eq!(d.limits, e.limits);
        // An older event, without the newer fields, reads too.
        let d = crate::UsageDebit::read(&serde_json::to_vec(&older_event()).unwrap()).unwrap();
        assert_eq!(
            (d.event_id.as_str(), d.billed_nanos, d.limits),
            ("e-1", None, None)
        );
        // Not an event: an error (skipped by the ledger).
        assert!(crate::UsageDebit::read(br#"{"billed_nanos": 5}"#).is_err());
    }

    #[test]
    fn a_usage_message_holds_one_event_or_one_per_line() {
        let one = serde_json::to_vec(&older_event()).unwrap();
        let e = read_usage_event(&one).unwrap();
        let mut two = serde_json::to_vec(&e).unwrap();
        two.push(b'\n');
        two.extend_from_slice(&one);
        two.push(b'\n');
        let read: Vec<UsageEvent> = read_usage_events(&two, true).map(Result::unwrap).collect();
        assert_eq!(read, vec![e.clone(), e.clone()]);
        // Without the rows header the payload is one event: two lines are not.
        assert_eq!(read_usage_events(&two, false).count(), 1);
        assert!(read_usage_events(&two, false).next().unwrap().is_err());
        // A single event is the same message either way.
        assert_eq!(read_usage_events(&one, false).next().unwrap().unwrap(), e);
        assert_eq!(read_usage_events(&one, true).count(), 1);
    }

    #[test]
    fn an_older_envelope_is_read_under_the_current_names() {
        let older = json!({
            "request_id": "0193a1b2-0000-7000-8000-000000000001", "attempt": 1,
            "ingress_id": "i", "reply_to": "sy.reply.i.x", "received_unix_ms": 1,
            "deadline_unix_ms": 2, "key_id": "k", "api": "chat_completions",
            "route": "fast", "provider": "openai", "model": "gpt-4o-mini",
            "request": {"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
            "fallback": [{"provider": "anthropic", "model": "claude", "rank": 2}],
        });
        let env = read_envelope(&serde_json::to_vec(&older).unwrap()).unwrap();
        assert_eq!(env.model, "fast");
        assert_eq!(env.upstream_model, "gpt-4o-mini");
        assert_eq!(env.fallback[0].upstream_model, "claude");
        // Something that is no envelope at all stays an error.
        assert!(read_envelope(br#"{"route": "x"}"#).is_err());
    }
}
