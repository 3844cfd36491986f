//! What each target of a request is billed at, fixed at admission (issue
//! 18): the price-table version in effect when the request was received
//! (the control plane's versions, kept in memory with the key table; version
//! 0, the config file's prices, until there is one), the target's price
//! under it, and the caller's org's multiplier (its own for the model, its
//! own default, its plan's for the model, its plan's default, else the
//! config's `[billing] markup_percent`). The worker bills `cost × multiplier`
//! with exactly these, and budgets are reserved with the same. No database,
//! no allocation but the plan's name: two map probes per target.

use sy_protocol::{Pricing, RequestEnvelope};

use crate::extract::Caller;
use crate::state::AppState;

/// Sets the pricing of `envelope`'s target and of each fallback.
pub(crate) fn price_targets(state: &AppState, caller: &Caller, envelope: &mut RequestEnvelope) {
    let book = state.tenants.as_ref().map(|t| t.prices());
    let at = i64::try_from(envelope.received_unix_ms).unwrap_or(i64::MAX);
    let org = caller.grant.as_deref().map(|g| &g.pricing);
    let price = |provider: &str, model: &str| {
        let (version, price) = book
            .as_deref()
            .and_then(|b| b.price_at(at, provider, model))
            .unwrap_or_else(|| {
                let config = state.providers.get(provider);
                (0, config.and_then(|p| p.prices.get(model)).copied())
            });
        Pricing {
            version,
            multiplier_ppb: org
                .and_then(|o| o.multiplier(model))
                .unwrap_or(sy_control::pricing::AT_COST_PPB + state.markup_ppb),
            plan: org.and_then(|o| o.plan.clone()),
            price,
        }
    };
    envelope.pricing = Some(price(&envelope.provider, &envelope.upstream_model));
    for t in &mut envelope.fallback {
        t.pricing = Some(price(&t.provider, &t.upstream_model));
    }
}
