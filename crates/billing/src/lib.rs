//! Billing (issue 18): what payment providers tell Switchyard, checked before
//! anything is credited: Stripe's webhook signature and events and its
//! Checkout Sessions (`stripe`), YooKassa's payments, re-read before they are
//! believed (`yookassa`), money in minor units and what it credits
//! (`money`), and whether an event may move money for the order it names
//! (`order`; docs/billing.md), and an org's monthly invoice rendered the
//! same way every time (`invoice`). Price versions and plans live in
//! `sy_protocol::price` and `sy_control::pricing`.
//!
//! Nothing here trusts a payment provider's message on its own: a Stripe
//! event is acted on only when its signature verifies under one of the
//! endpoint's secrets, within the tolerance window; a YooKassa notification
//! only for what its payment says when read back from YooKassa's API; and
//! either only for an order made for that provider with the same amount and
//! currency.

pub mod invoice;
pub mod money;
pub mod order;
pub mod stripe;
pub mod yookassa;

pub use order::{Decision, Order, OrderStatus, Provider, Rejection};

/// The HTTP client for payment providers' APIs: TCP_NODELAY, a 20 s
/// timeout, rustls with the ring provider (installed if none is yet).
pub fn http_client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .map_err(|e| format!("an HTTP client for payment providers: {e}"))
}

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
