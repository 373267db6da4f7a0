//! The security review's promises on the real binary: the admin key cannot be guessed at
//! speed, and keys never reach the log.

mod common;

use common::{Server, run};

const ADMIN: &str = "security-admin-key-0123456789";

#[test]
fn guessing_the_admin_key_is_slowed_per_address() {
    let log = tokenfab_testkit::temp_path("security-log", "txt");
    let s = Server::start_logged(&["--admin-key", ADMIN], &log);
    run(async {
        let http = reqwest::Client::new();
        let get = |key: &'static str| {
            let http = http.clone();
            let url = s.url("/admin/accounts");
            async move { http.get(url).bearer_auth(key).send().await.unwrap() }
        };
        let r = get(ADMIN).await;
        assert_eq!(r.status(), 200);
        for i in 0..10 {
            let r = get("sk-a-wrong-guess").await;
            assert_eq!(r.status(), 401, "guess {i}");
        }
        // The eleventh guess within the minute is refused unread, and so is the right key
        // from the same address until the minute ends.
        for key in ["sk-a-wrong-guess", ADMIN] {
            let r = get(key).await;
            assert_eq!(r.status(), 429);
            let wait: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&wait), "{wait}");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "too_many_admin_failures");
        }
        // API routes are not the admin API: they are not locked.
        let r = http.get(s.url("/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("response"), "the access log was written");
    for secret in [ADMIN, "sk-a-wrong-guess"] {
        assert!(!text.contains(secret), "a key reached the log");
    }
}
