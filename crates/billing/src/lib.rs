//! Billing (issue 18): what payment providers tell Switchyard, checked before
//! anything is credited. This first slice holds the Stripe side that needs no
//! network: the webhook signature, what an event says, and whether it may
//! credit the order it names (docs/billing.md). Price versions, plans,
//! orders, YooKassa, the webhook endpoints and invoices come next.
//!
//! Nothing here trusts a payment provider's message on its own: a Stripe
//! event is acted on only when its signature verifies under one of the
//! endpoint's secrets, within the tolerance window, and when it names an
//! order made for Stripe with the same amount and currency.

pub mod order;
pub mod stripe;

pub use order::{Decision, Order, OrderStatus, Provider, Rejection};
