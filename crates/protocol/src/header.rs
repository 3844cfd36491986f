//! HTTP header names Switchyard sets or reads. No header literal lives elsewhere.

/// The request id (UUIDv7) on every response.
pub const REQUEST_ID: &str = "x-switchyard-request-id";
/// The provider entry (its name in the config) that served the request.
pub const PROVIDER: &str = "x-switchyard-provider";
/// The upstream model the provider was asked for.
pub const MODEL: &str = "x-switchyard-model";
/// How many attempts the request took (1 without retries or fallback).
pub const ATTEMPTS: &str = "x-switchyard-attempts";
/// The request class chosen by the classifier (or given by the client).
pub const CLASS: &str = "x-switchyard-class";
/// A client's task type hint (e.g. `code`, `creative_writing`); wins over the classifier.
pub const TASK_TYPE: &str = "x-switchyard-task-type";
/// The smart route that served the request (`model: "auto"`), or the model route.
pub const ROUTE: &str = "x-switchyard-route";

/// Request: puts the request under its project's session cap, with every
/// other request naming the same session (`x-switchyard-session: agent-42`).
pub const SESSION: &str = "x-switchyard-session";

/// Request: `use`, `refresh` or `bypass` the response cache (with
/// `max-age=<s>`, `ttl=<s>`, `any-temperature`). Response: `hit`, `miss` or
/// `bypass`.
pub const CACHE: &str = "x-switchyard-cache";

/// Request: `stages` asks for where the request's time went, answered in a
/// `Server-Timing` response header (docs/BENCHMARKS.md, "Where the time
/// goes"); any other value is ignored.
pub const TIMING: &str = "x-switchyard-timing";
/// Response: the stages of a request that asked with [`TIMING`].
pub const SERVER_TIMING: &str = "server-timing";

/// The W3C trace context, continued from a client's request and carried in
/// the headers of a request's NATS messages (issue 19).
pub const TRACEPARENT: &str = "traceparent";

/// NATS header of a usage message that carries several usage events, one
/// JSON object per line; its value says how many. Without it a usage
/// message is one event.
pub const USAGE_ROWS: &str = "Switchyard-Usage-Rows";

/// NATS header of a usage message that stores an event again (a redelivered
/// request that was finished already): the event may be stored already in
/// another message, so its consumers look before they count it.
pub const USAGE_AGAIN: &str = "Switchyard-Usage-Again";

/// NATS header of a usage message whose events are all billed 0: nothing in
/// it for the ledger to debit (it skips the message unread).
pub const USAGE_FREE: &str = "Switchyard-Usage-Free";
