//! What admission does when Redis, the shared rate-limit store, goes away mid-load: refuse
//! with a `Limits` refusal (503 to clients) by default, or admit without rate limits when
//! the operator chose `limits_fail_open`; balances are enforced either way. Runs a Redis of
//! its own (Debian's `redis-server`, which scripts/services.sh installs) and stops it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokenfab_platform::limits::Rates;
use tokenfab_platform::store::Store;
use tokenfab_platform::{Caller, Platform, PlatformConfig, Refusal};

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_closed_or_open_as_configured() {
    let port = free_port();
    let redis = Redis(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services.sh installs Debian's redis-server)"),
    );
    let url = format!("redis://127.0.0.1:{port}/");
    let open = |fail_open: bool| {
        let url = url.clone();
        async move {
            let db = tokenfab_testkit::temp_db("redis-outage");
            let store = Store::open(&db.sqlite_url()).await.unwrap();
            let cfg = PlatformConfig {
                redis_url: Some(url),
                instance: tokenfab_testkit::unique("redis-outage"),
                tiers: HashMap::from([(
                    "default".to_owned(),
                    Rates {
                        rpm: Some(1000),
                        ..Default::default()
                    },
                )]),
                models: HashMap::new(),
                limits_fail_open: fail_open,
            };
            (Platform::open(store, cfg).await, db)
        }
    };
    // Redis may take a moment to listen.
    let mut tries = 0;
    let (closed, _db1) = loop {
        match open(false).await {
            (Ok(p), db) => break (p, db),
            (Err(e), _) => {
                tries += 1;
                assert!(tries < 100, "Redis did not come up: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (opened, _db2) = open(true).await;
    let opened = opened.unwrap();
    for p in [&closed, &opened] {
        let a = p
            .admit(&Caller::Open, "m", 10, 10)
            .await
            .expect("Redis is up");
        assert_eq!(
            a.standing().0.map(|s| s.limit),
            Some(1000),
            "counted in Redis"
        );
        drop(a);
    }

    drop(redis);
    let within = |f| tokio::time::timeout(Duration::from_secs(30), f);
    match within(closed.admit(&Caller::Open, "m", 10, 10)).await {
        Ok(Err(Refusal::Limits(_))) => {}
        Ok(Ok(_a)) => panic!("admitted with the rate-limit store gone, failing closed"),
        Ok(Err(e)) => panic!("refused for another reason: {e}"),
        Err(_) => panic!("admission hung with Redis gone"),
    }
    let a = within(opened.admit(&Caller::Open, "m", 10, 10))
        .await
        .expect("admission hung with Redis gone")
        .expect("failing open admits without rate limits");
    assert_eq!(a.standing(), (None, None), "no standing without counters");
}
