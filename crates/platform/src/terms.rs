//! Prices and limits: per account tier, and per model over the tier's, as the
//! configuration gives them; a reload replaces them whole.

use std::collections::HashMap;
use std::sync::Arc;

use crate::Platform;
use crate::limits::Rates;
use crate::money::{Price, Share};

/// Prices and limits of one model.
#[derive(Clone, Debug, Default)]
pub struct ModelTerms {
    pub price: Price,
    /// The share of `price` a batch request pays.
    pub batch_discount: Share,
    /// Per account tier; field by field over the tier's own limits.
    pub limits: HashMap<String, Rates>,
}

/// What a configuration reload may change: tier limits and per-model prices and limits.
#[derive(Clone, Debug, Default)]
pub struct Terms {
    pub tiers: HashMap<String, Rates>,
    /// Per model id (lowercase).
    pub models: HashMap<String, ModelTerms>,
}

impl Platform {
    /// Replaces the prices and limits (a configuration reload); requests already admitted
    /// keep the terms they were admitted under.
    pub fn set_terms(&self, terms: Terms) {
        *self.terms.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(terms);
    }

    /// The prices and limits in force now, for an operator to read back what the platform
    /// applies (after a reload, not what a file on disk may say).
    pub fn terms(&self) -> Arc<Terms> {
        self.terms.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn price(&self, model: &str) -> Price {
        self.terms()
            .models
            .get(&model.to_ascii_lowercase())
            .map(|t| t.price)
            .unwrap_or_default()
    }

    /// What one request of a batch pays: the price times the model's batch discount.
    pub fn batch_price(&self, model: &str) -> Price {
        self.terms()
            .models
            .get(&model.to_ascii_lowercase())
            .map(|t| t.price.times(t.batch_discount))
            .unwrap_or_default()
    }

    /// The limits of `tier` on `model`: the tier's (or the `default` tier's), overlaid
    /// with the model's own for that tier.
    pub fn rates(&self, tier: &str, model: &str) -> Rates {
        let all = self.terms();
        let base = all
            .tiers
            .get(tier)
            .or_else(|| all.tiers.get("default"))
            .copied()
            .unwrap_or_default();
        let terms = all.models.get(&model.to_ascii_lowercase());
        match terms.and_then(|t| t.limits.get(tier).or_else(|| t.limits.get("default"))) {
            Some(over) => base.overlaid(over),
            None => base,
        }
    }
}
