//! Top-up orders and payment providers' events in PostgreSQL (issue 18): an
//! event is stored once under (provider, event id) in the same transaction
//! as the ledger row it writes, so a replay finds its row and does nothing,
//! and a failure leaves neither (an event marked seen before its credit
//! committed would never be credited). Whether an event may move money for
//! its order is `sy_billing`'s decision (same provider, amount and currency;
//! a payment credited once; never more back than was paid).

use serde::Serialize;
use serde_json::json;
use sqlx::FromRow;
use sy_billing::{Decision, Order, OrderStatus, PaymentEvent, Provider, Rejection};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::feed::KeyNotice;
use crate::ledger::entry;
use crate::store::{Store, StoreError};

/// How top-ups are paid: the payment providers' APIs this deployment is set
/// up for, one HTTP client for them, and what each currency credits.
#[derive(Debug, Clone)]
pub struct Topups {
    /// For the providers' APIs (TCP_NODELAY, 20 s timeout).
    pub http: reqwest::Client,
    /// Stripe Checkout (`[billing.stripe] secret_key`).
    pub stripe: Option<sy_billing::stripe::Checkout>,
    /// YooKassa (`[billing.yookassa]`).
    pub yookassa: Option<sy_billing::yookassa::Client>,
    /// USD and `[billing.exchange_rates]`.
    pub rates: sy_billing::money::Rates,
}

impl Topups {
    /// From the config; none when no provider can make a payment.
    pub fn from_config(billing: &sy_config::BillingConfig) -> Result<Option<Topups>, String> {
        let stripe = billing
            .stripe
            .as_ref()
            .and_then(|s| s.checkout.as_ref())
            .map(|c| sy_billing::stripe::Checkout {
                api_base: c.api_base.clone(),
                secret_key: c.secret_key.expose().to_owned(),
                success_url: c.success_url.clone(),
                cancel_url: c.cancel_url.clone(),
            });
        let yookassa = billing.yookassa.as_ref().map(yookassa_client);
        if stripe.is_none() && yookassa.is_none() {
            return Ok(None);
        }
        Ok(Some(Topups {
            http: sy_billing::http_client()?,
            stripe,
            yookassa,
            rates: sy_billing::money::Rates::new(billing.exchange_rates.clone()),
        }))
    }
}

pub(crate) fn yookassa_client(c: &sy_config::YookassaConfig) -> sy_billing::yookassa::Client {
    sy_billing::yookassa::Client {
        api_base: c.api_base.clone(),
        shop_id: c.shop_id.clone(),
        secret_key: c.secret_key.expose().to_owned(),
        return_url: c.return_url.clone(),
    }
}

/// A top-up order to make.
#[derive(Debug, Clone, Copy)]
pub struct NewOrder<'a> {
    /// The org it credits.
    pub org: Uuid,
    /// The provider it is paid through.
    pub provider: Provider,
    /// In the currency's minor units (cents, kopecks).
    pub amount: i64,
    /// ISO code (stored lowercase).
    pub currency: &'a str,
    /// What it credits once paid, nano-USD.
    pub credit_nanos: i64,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct StoredOrder {
    /// `ord_<32 hex>`.
    pub id: String,
    /// The org it credits.
    pub org_id: Uuid,
    /// `stripe` or `yookassa`.
    pub provider: String,
    /// Minor units.
    pub amount: i64,
    /// Lowercase ISO code.
    pub currency: String,
    /// What it credits once paid, nano-USD.
    pub credit_nanos: i64,
    /// `pending` or `paid`.
    pub status: String,
    /// Refunded or charged back so far, minor units.
    pub reversed: i64,
    /// The provider's payment, once known.
    pub payment_ref: Option<String>,
}

impl StoredOrder {
    fn decision_view(&self) -> Option<Order> {
        Some(Order {
            id: self.id.clone(),
            provider: Provider::from_name(&self.provider)?,
            amount: self.amount,
            currency: self.currency.clone(),
            status: match self.status.as_str() {
                "paid" => OrderStatus::Paid,
                _ => OrderStatus::Pending,
            },
            reversed: self.reversed,
        })
    }
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The order was paid: its org was credited this much, nano-USD.
    Credited {
        /// The org.
        org: Uuid,
        /// nano-USD.
        nanos: i64,
    },
    /// Money went back: its org was debited this much, nano-USD.
    Debited {
        /// The org.
        org: Uuid,
        /// nano-USD.
        nanos: i64,
    },
    /// Nothing to do (an event that moves no money, or already done).
    Nothing,
    /// Refused, with the reason (stored with the event).
    Rejected(String),
    /// This event was received before: nothing was done again.
    Replayed,
    /// Not now: money back for a payment not recorded yet (events can
    /// arrive out of order). Nothing was stored; the provider should send
    /// it again (the endpoint answers so that it does).
    Later(String),
}

const ORDER_COLUMNS: &str =
    "id, org_id, provider, amount, currency, credit_nanos, status, reversed, payment_ref";

impl Store {
    /// Makes a top-up order; audited.
    pub async fn create_order(
        &self,
        actor: &Actor,
        new: NewOrder<'_>,
    ) -> Result<StoredOrder, StoreError> {
        let id = format!("ord_{}", Uuid::new_v4().simple());
        let mut tx = self.pool().begin().await?;
        let order: Option<StoredOrder> = sqlx::query_as(&format!(
            "INSERT INTO payment_orders (id, org_id, provider, amount, currency, credit_nanos) \
             SELECT $1, id, $3, $4, $5, $6 FROM orgs WHERE id = $2 RETURNING {ORDER_COLUMNS}"
        ))
        .bind(&id)
        .bind(new.org)
        .bind(new.provider.as_str())
        .bind(new.amount)
        .bind(new.currency.to_ascii_lowercase())
        .bind(new.credit_nanos)
        .fetch_optional(&mut *tx)
        .await?;
        let order = order.ok_or(StoreError::NotFound("org"))?;
        let e = Entry {
            action: "org.order",
            target_kind: "org",
            target_id: new.org.to_string(),
            before: None,
            after: Some(json!({"order": order.id, "provider": order.provider,
                               "amount": order.amount, "currency": order.currency,
                               "credit_nanos": order.credit_nanos})),
        };
        audit::append(&mut tx, actor, e).await?;
        tx.commit().await?;
        Ok(order)
    }

    /// How many of `org`'s orders made in the last hour are still unpaid.
    pub async fn recent_unpaid_orders(&self, org: Uuid) -> Result<i64, StoreError> {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM payment_orders WHERE org_id = $1 AND status = 'pending' \
             AND created_at > now() - interval '1 hour'",
        )
        .bind(org)
        .fetch_one(self.pool())
        .await?;
        Ok(n)
    }

    /// Records the provider's reference of `order`'s payment (a Checkout
    /// Session until the payment itself is known); never replaces one the
    /// payment already set.
    pub async fn set_payment_ref(&self, order: &str, reference: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE payment_orders SET payment_ref = $2 \
             WHERE id = $1 AND status = 'pending' AND payment_ref IS NULL",
        )
        .bind(order)
        .bind(reference)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The order `id`, if there is one.
    pub async fn order(&self, id: &str) -> Result<Option<StoredOrder>, StoreError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ORDER_COLUMNS} FROM payment_orders WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Applies one authenticated event of `provider`, exactly once: the
    /// event row, the order's change and the ledger row are one transaction.
    pub async fn apply_payment(
        &self,
        provider: Provider,
        event: &PaymentEvent,
    ) -> Result<Applied, StoreError> {
        let (kind, amount, currency) = match event {
            PaymentEvent::Paid {
                amount, currency, ..
            } => ("paid", Some(*amount), Some(currency.as_str())),
            PaymentEvent::Reversed {
                amount,
                currency,
                refund,
                ..
            } => (
                if *refund { "refund" } else { "chargeback" },
                Some(*amount),
                Some(currency.as_str()),
            ),
            PaymentEvent::Other { kind, .. } => (kind.as_str(), None, None),
        };
        let mut tx = self.pool().begin().await?;
        let fresh: Option<(i32,)> = sqlx::query_as(
            "INSERT INTO payment_events (provider, event_id, kind, outcome, amount, currency) \
             VALUES ($1, $2, $3, 'nothing', $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
        )
        .bind(provider.as_str())
        .bind(event.event_id())
        .bind(kind)
        .bind(amount)
        .bind(currency)
        .fetch_optional(&mut *tx)
        .await?;
        if fresh.is_none() {
            return Ok(Applied::Replayed);
        }
        let (order_id, stored, decided) = match event {
            PaymentEvent::Other { .. } => (None, None, Ok(Decision::Nothing)),
            PaymentEvent::Paid {
                order_id,
                amount,
                currency,
                ..
            } => {
                let stored = self
                    .order_for_update(&mut tx, "id = $1", order_id, None)
                    .await?;
                let view = stored.as_ref().and_then(StoredOrder::decision_view);
                let decided =
                    sy_billing::order::paid(order_id, view.as_ref(), provider, *amount, currency);
                (Some(order_id.clone()), stored, decided)
            }
            PaymentEvent::Reversed {
                payment,
                amount,
                currency,
                refund,
                ..
            } => {
                let stored = self
                    .order_for_update(
                        &mut tx,
                        "provider = $2 AND payment_ref = $1",
                        payment,
                        Some(provider.as_str()),
                    )
                    .await?;
                let view = stored.as_ref().and_then(StoredOrder::decision_view);
                let decided = sy_billing::order::reversed(
                    payment,
                    view.as_ref(),
                    provider,
                    *amount,
                    currency,
                    *refund,
                );
                (stored.as_ref().map(|o| o.id.clone()), stored, decided)
            }
        };
        if let (
            PaymentEvent::Reversed { .. },
            Err(r @ (Rejection::NotPaid(_) | Rejection::UnknownOrder(_))),
        ) = (event, &decided)
        {
            tx.rollback().await?;
            return Ok(Applied::Later(r.to_string()));
        }
        let (applied, outcome, reason) = match (decided, stored) {
            (Err(r), _) => (Applied::Rejected(r.to_string()), "rejected", r.to_string()),
            (Ok(Decision::Nothing), _) | (Ok(_), None) => {
                (Applied::Nothing, "nothing", String::new())
            }
            (Ok(Decision::Credit(_)), Some(o)) => {
                let payment = match event {
                    PaymentEvent::Paid { payment, .. } => payment.as_str(),
                    _ => "",
                };
                let note = format!("top-up {} {} ({payment})", o.amount, o.currency);
                let reference = format!("{}:order:{}", o.provider, o.id);
                entry(
                    &mut tx,
                    o.org_id,
                    "credit",
                    o.credit_nanos,
                    &reference,
                    &note,
                )
                .await?;
                sqlx::query(
                    "UPDATE payment_orders SET status = 'paid', paid_at = now(), payment_ref = $2 \
                     WHERE id = $1",
                )
                .bind(&o.id)
                .bind(payment)
                .execute(&mut *tx)
                .await?;
                (
                    Applied::Credited {
                        org: o.org_id,
                        nanos: o.credit_nanos,
                    },
                    "credited",
                    String::new(),
                )
            }
            (Ok(Decision::Debit(minor)), Some(o)) => {
                // In proportion to what the order credited, rounded up and
                // counted on the running total: what came back in all is
                // debited to the nano, never in the payer's favour, and all
                // of it never more than the order credited.
                let share = |reversed: i64| -> i128 {
                    let whole = i128::from(reversed) * i128::from(o.credit_nanos);
                    let amount = i128::from(o.amount.max(1));
                    (whole + amount - 1) / amount
                };
                let nanos = i64::try_from(share(o.reversed + minor) - share(o.reversed))
                    .unwrap_or(i64::MAX);
                let reference = format!("{}:event:{}", o.provider, event.event_id());
                let note = format!("{kind} {minor} {} of order {}", o.currency, o.id);
                entry(&mut tx, o.org_id, "adjustment", -nanos, &reference, &note).await?;
                sqlx::query("UPDATE payment_orders SET reversed = reversed + $2 WHERE id = $1")
                    .bind(&o.id)
                    .bind(minor)
                    .execute(&mut *tx)
                    .await?;
                (
                    Applied::Debited {
                        org: o.org_id,
                        nanos,
                    },
                    "debited",
                    String::new(),
                )
            }
        };
        sqlx::query(
            "UPDATE payment_events SET outcome = $3, reason = $4, order_id = $5 \
             WHERE provider = $1 AND event_id = $2",
        )
        .bind(provider.as_str())
        .bind(event.event_id())
        .bind(outcome)
        .bind(&reason)
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
        if let Applied::Credited { org, nanos } | Applied::Debited { org, nanos } = &applied {
            let e = Entry {
                action: "org.payment",
                target_kind: "org",
                target_id: org.to_string(),
                before: None,
                after: Some(
                    json!({"provider": provider.as_str(), "event": event.event_id(),
                                   "outcome": outcome, "nanos": nanos}),
                ),
            };
            let actor = Actor::local(provider.as_str(), "payments");
            audit::append(&mut tx, &actor, e).await?;
        }
        tx.commit().await?;
        if matches!(applied, Applied::Credited { .. } | Applied::Debited { .. }) {
            self.announce(KeyNotice::All).await;
        }
        if let Applied::Rejected(why) = &applied {
            tracing::warn!(
                provider = provider.as_str(),
                event = event.event_id(),
                why,
                "Payment event rejected."
            );
        }
        Ok(applied)
    }

    /// The order `clause` names (with `$1` = `value`, `$2` = `provider`),
    /// locked for this transaction.
    async fn order_for_update(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        clause: &str,
        value: &str,
        provider: Option<&str>,
    ) -> Result<Option<StoredOrder>, StoreError> {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM payment_orders WHERE {clause} FOR UPDATE");
        let q = sqlx::query_as(&sql).bind(value);
        let q = match provider {
            Some(p) => q.bind(p),
            None => q,
        };
        Ok(q.fetch_optional(&mut **tx).await?)
    }
}
