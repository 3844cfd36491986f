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

/// What a payment provider's (authenticated) event says about money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentEvent {
    /// A payment for an order completed.
    Paid {
        /// The provider's event id: stored once, so a replay does nothing.
        event_id: String,
        /// The order it pays (the id Switchyard gave the provider).
        order_id: String,
        /// In the currency's minor units, as the provider counts them.
        amount: i64,
        /// Lowercase ISO code.
        currency: String,
        /// The provider's payment (Stripe's PaymentIntent `pi_…`).
        payment: String,
    },
    /// Money went back: a refund (`refund`: `amount` is what was refunded in
    /// all so far) or a chargeback (`amount` is what it takes).
    Reversed {
        /// The provider's event id.
        event_id: String,
        /// The provider's payment (how the order is found).
        payment: String,
        /// Minor units.
        amount: i64,
        /// Lowercase ISO code.
        currency: String,
        /// A refund (cumulative) or a chargeback.
        refund: bool,
    },
    /// Anything else: stored, not acted on.
    Other {
        /// The provider's event id.
        event_id: String,
        /// Its type.
        kind: String,
    },
}

impl PaymentEvent {
    /// The provider's event id.
    pub fn event_id(&self) -> &str {
        match self {
            PaymentEvent::Paid { event_id, .. }
            | PaymentEvent::Reversed { event_id, .. }
            | PaymentEvent::Other { event_id, .. } => event_id,
        }
    }
}

impl Provider {
    /// Its name as stored (`stripe`, `yookassa`).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Yookassa => "yookassa",
        }
    }

    /// From its stored name.
    pub fn from_name(name: &str) -> Option<Provider> {
        match name {
            "stripe" => Some(Provider::Stripe),
            "yookassa" => Some(Provider::Yookassa),
            _ => None,
        }
    }
}
