//! Test-only: a platform on a throwaway SQLite ledger, with one paid model and an account
//! holding a key, for the tests of admission and settlement.

use std::collections::HashMap;
use std::sync::Arc;

use tokenfab_testkit::TempPath;

use crate::money::Price;
use crate::store::Store;
use crate::{Caller, ModelTerms, Platform, PlatformConfig};

/// Model `m` at 1,000 and 2,000 micro-units per million input and output tokens; account
/// `a` credited with 10.00, and the caller of its key. The guard removes the ledger.
pub(crate) async fn paid_platform(tag: &str) -> (Arc<Platform>, Caller, TempPath) {
    let db = tokenfab_testkit::temp_db(tag);
    let price = Price {
        input_per_million: "1000".parse().unwrap(),
        output_per_million: "2000".parse().unwrap(),
        cached_input_per_million: None,
    };
    let cfg = PlatformConfig {
        limits_fail_open: false,
        redis_url: None,
        instance: "test".into(),
        tiers: HashMap::new(),
        models: HashMap::from([(
            "m".to_owned(),
            ModelTerms {
                price,
                limits: HashMap::new(),
                batch_discount: Default::default(),
            },
        )]),
    };
    let store = Store::open(&db.sqlite_url()).await.unwrap();
    let p = Platform::open(store, cfg).await.unwrap();
    p.store.create_account("a", "default").await.unwrap();
    p.store
        .credit("a", "10.00".parse().unwrap(), "test")
        .await
        .unwrap();
    let (secret, _) = p.store.create_key("a").await.unwrap();
    let caller = p
        .authenticate(Some(&format!("Bearer {secret}")))
        .await
        .unwrap();
    (p, caller, db)
}
