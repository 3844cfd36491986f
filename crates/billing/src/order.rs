//! Top-up orders and whether a provider's word may move money for one.
//!
//! An order is made for one payment provider, one amount and one currency;
//! a payment event credits it only when all three match and it was not
//! credited before (Stripe announces one Checkout payment twice:
//! `checkout.session.completed` and `payment_intent.succeeded`). Everything
//! else is a [`Rejection`], recorded with its reason and crediting nothing:
//! new-api credited an order made for another provider (#4353).

/// A payment provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Stripe (Checkout Sessions).
    Stripe,
    /// YooKassa (payments API v3).
    Yookassa,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Created; waiting for its payment.
    Pending,
    /// Paid and credited.
    Paid,
}

/// A top-up order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Its id (the provider carries it back).
    pub id: String,
    /// The provider it was made for.
    pub provider: Provider,
    /// In the currency's minor units.
    pub amount: i64,
    /// Lowercase ISO code.
    pub currency: String,
    /// Where it stands.
    pub status: OrderStatus,
    /// Refunded or charged back so far, minor units.
    pub reversed: i64,
}

/// What a payment provider's (authenticated) event does to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Credit the order's amount (it is now paid).
    Credit(i64),
    /// Debit this much (a refund or a chargeback of a paid order).
    Debit(i64),
    /// Nothing more to do (credited before, or refunded up to that already).
    Nothing,
}

/// Why an event moves no money for the order it names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No order has that id.
    #[error("no order {0}")]
    UnknownOrder(String),
    /// The order was made for another provider.
    #[error("order {order} was made for {made_for:?}, not {from:?}")]
    WrongProvider {
        /// The order.
        order: String,
        /// Its provider.
        made_for: Provider,
        /// The provider the event came from.
        from: Provider,
    },
    /// The amount paid is not the order's.
    #[error("order {order} is for {expected}, the payment says {paid}")]
    WrongAmount {
        /// The order.
        order: String,
        /// The order's amount.
        expected: i64,
        /// What the event says.
        paid: i64,
    },
    /// The currency is not the order's.
    #[error("order {order} is in {expected}, the payment says {paid}")]
    WrongCurrency {
        /// The order.
        order: String,
        /// The order's currency.
        expected: String,
        /// What the event says.
        paid: String,
    },
    /// Money back for an order that was never paid.
    #[error("order {0} was not paid")]
    NotPaid(String),
}

impl Order {
    fn matches(&self, from: Provider, amount: i64, currency: &str) -> Result<(), Rejection> {
        self.same_provider_and_currency(from, currency)?;
        if amount != self.amount {
            return Err(Rejection::WrongAmount {
                order: self.id.clone(),
                expected: self.amount,
                paid: amount,
            });
        }
        Ok(())
    }

    fn same_provider_and_currency(&self, from: Provider, currency: &str) -> Result<(), Rejection> {
        if self.provider != from {
            return Err(Rejection::WrongProvider {
                order: self.id.clone(),
                made_for: self.provider,
                from,
            });
        }
        if !self.currency.eq_ignore_ascii_case(currency) {
            return Err(Rejection::WrongCurrency {
                order: self.id.clone(),
                expected: self.currency.clone(),
                paid: currency.to_ascii_lowercase(),
            });
        }
        Ok(())
    }
}

/// A payment of `amount` `currency` from `from` for order `id` (`order` is
/// what the store holds under that id).
pub fn paid(
    id: &str,
    order: Option<&Order>,
    from: Provider,
    amount: i64,
    currency: &str,
) -> Result<Decision, Rejection> {
    let order = order.ok_or_else(|| Rejection::UnknownOrder(id.to_owned()))?;
    order.matches(from, amount, currency)?;
    Ok(match order.status {
        OrderStatus::Pending => Decision::Credit(order.amount),
        OrderStatus::Paid => Decision::Nothing,
    })
}

/// Money back from `from` for order `id`: a refund says what was refunded
/// in all so far (`cumulative`), a chargeback what it takes. Never more than
/// was paid is debited in all.
pub fn reversed(
    id: &str,
    order: Option<&Order>,
    from: Provider,
    amount: i64,
    currency: &str,
    cumulative: bool,
) -> Result<Decision, Rejection> {
    let order = order.ok_or_else(|| Rejection::UnknownOrder(id.to_owned()))?;
    order.same_provider_and_currency(from, currency)?;
    if order.status != OrderStatus::Paid {
        return Err(Rejection::NotPaid(order.id.clone()));
    }
    let left = (order.amount - order.reversed).max(0);
    let debit = match cumulative {
        true => (amount.min(order.amount) - order.reversed).max(0),
        false => amount.max(0).min(left),
    };
    Ok(match debit {
        0 => Decision::Nothing,
        d => Decision::Debit(d),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(provider: Provider, status: OrderStatus, reversed: i64) -> Order {
        Order {
            id: "ord_1".into(),
            provider,
            amount: 1000,
            currency: "usd".into(),
            status,
            reversed,
        }
    }

    #[test]
    fn only_a_payment_for_the_orders_provider_amount_and_currency_credits_and_only_once() {
        let pending = order(Provider::Stripe, OrderStatus::Pending, 0);
        let pay = |o: Option<&Order>, from, amount, currency: &str| {
            paid("ord_1", o, from, amount, currency)
        };
        assert_eq!(
            pay(Some(&pending), Provider::Stripe, 1000, "USD"),
            Ok(Decision::Credit(1000))
        );
        // The same payment announced again (another event id): nothing more.
        let done = order(Provider::Stripe, OrderStatus::Paid, 0);
        assert_eq!(
            pay(Some(&done), Provider::Stripe, 1000, "usd"),
            Ok(Decision::Nothing)
        );
        assert_eq!(
            pay(None, Provider::Stripe, 1000, "usd"),
            Err(Rejection::UnknownOrder("ord_1".into()))
        );
        // An order made for YooKassa is not paid by a Stripe event (#4353).
        let other = order(Provider::Yookassa, OrderStatus::Pending, 0);
        assert!(matches!(
            pay(Some(&other), Provider::Stripe, 1000, "usd"),
            Err(Rejection::WrongProvider { .. })
        ));
        assert!(matches!(
            pay(Some(&pending), Provider::Stripe, 999, "usd"),
            Err(Rejection::WrongAmount {
                expected: 1000,
                paid: 999,
                ..
            })
        ));
        assert!(matches!(
            pay(Some(&pending), Provider::Stripe, 1000, "eur"),
            Err(Rejection::WrongCurrency { .. })
        ));
    }

    #[test]
    fn refunds_and_chargebacks_debit_what_came_back_never_more_than_was_paid() {
        let paid_order = order(Provider::Stripe, OrderStatus::Paid, 0);
        let back = |o: &Order, amount, cumulative| {
            reversed(
                "ord_1",
                Some(o),
                Provider::Stripe,
                amount,
                "usd",
                cumulative,
            )
        };
        // Refunds say what was refunded in all: 400, then 700 in all → 300 more.
        assert_eq!(back(&paid_order, 400, true), Ok(Decision::Debit(400)));
        let after = order(Provider::Stripe, OrderStatus::Paid, 400);
        assert_eq!(back(&after, 700, true), Ok(Decision::Debit(300)));
        assert_eq!(back(&after, 400, true), Ok(Decision::Nothing), "a replay");
        assert_eq!(back(&after, 5000, true), Ok(Decision::Debit(600)), "capped");
        // A chargeback takes its amount, within what is left.
        assert_eq!(back(&after, 800, false), Ok(Decision::Debit(600)));
        let all_back = order(Provider::Stripe, OrderStatus::Paid, 1000);
        assert_eq!(back(&all_back, 100, false), Ok(Decision::Nothing));
        // Never for an unpaid order, another provider's, or another currency.
        let pending = order(Provider::Stripe, OrderStatus::Pending, 0);
        assert_eq!(
            back(&pending, 100, true),
            Err(Rejection::NotPaid("ord_1".into()))
        );
        let theirs = order(Provider::Yookassa, OrderStatus::Paid, 0);
        assert!(matches!(
            back(&theirs, 100, true),
            Err(Rejection::WrongProvider { .. })
        ));
        assert!(matches!(
            reversed(
                "ord_1",
                Some(&paid_order),
                Provider::Stripe,
                100,
                "rub",
                true
            ),
            Err(Rejection::WrongCurrency { .. })
        ));
    }
}
