//! The control plane: tenants (orgs → projects → API keys), their admin API,
//! the in-memory key table the ingress authenticates from, and its NATS feed
//! (issue 16, built in slices; docs/tenancy.md says what stands).
//!
//! What stands today: the key itself ([`key`]: its format, the checksum a
//! typo or a secret scanner can check without a lookup, the keyed hash that is
//! all a database ever stores of it) and the tenants' tables in PostgreSQL
//! ([`store`]: orgs, projects, keys; create, rotate with grace, revoke,
//! authenticate), every write with its row in the hash-chained audit log
//! ([`audit`]) in the same transaction; and the in-memory table the ingress
//! authenticates from ([`keytable`]: what each key may do, as a [`keytable::Grant`]),
//! loaded from the store and kept current over NATS ([`feed`]); and the admin
//! API ([`admin`], with its roles) over the store's reads and changes
//! ([`views`]).

pub mod admin;
pub mod admin_tokens;
pub mod audit;
pub mod console;
pub mod console_sessions;
pub mod credentials;
pub mod feed;
pub mod invoices;
pub mod key;
pub mod keytable;
pub mod ledger;
pub mod payments;
pub mod pipelines;
pub mod pricing;
pub mod reconcile;
pub mod sealed;
pub mod store;
pub mod views;
pub mod webhooks;
