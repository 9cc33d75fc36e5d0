//! `bluegreen reload` (and SIGHUP): the live side's upstream list swapped
//! under load without a failed request; a bad file changes nothing and
//! says why; what cannot change live is named.

use crate::support::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn edit(router: &RouterProc, from: &str, to: &str) {
    let text = std::fs::read_to_string(&router.config).unwrap();
    assert!(text.contains(from), "{from} not in the config");
    std::fs::write(&router.config, text.replacen(from, to, 1)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_swaps_the_live_sides_upstreams_under_load_without_a_failed_request() {
    let (old, green) = (
        Backend::start("blue-old").await,
        Backend::start("green").await,
    );
    let new = Backend::start("blue-new").await;
    let router = RouterBuilder::new(&[&old], &[&green]).start();
    router.wait_all_healthy().await;

    // Keep-alive clients with varied requests, every answer checked.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let (stop, seen, base) = (stop.clone(), seen.clone(), router.url(""));
            tokio::spawn(async move {
                let c = h1_client();
                for n in 0..100_000u32 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let r = match get(&c, &format!("{base}/items/{n}?client={i}")).await {
                        Ok((200, body)) => Ok(body),
                        Ok((status, body)) => Err(format!("{status} {body}")),
                        Err(e) => Err(e.to_string()),
                    };
                    seen.lock().unwrap().push(r);
                }
            })
        })
        .collect();
    wait_until(Duration::from_secs(10), "load running", || async {
        seen.lock().unwrap().len() > 200
    })
    .await;

    edit(&router, &old.addr.to_string(), &new.addr.to_string());
    let (code, out, err) = router.cli(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "environments.blue.upstreams: +{} -{}",
            new.addr, old.addr
        )),
        "{out}"
    );
    // The new upstream gets traffic once its checks pass; the old one
    // finishes what it had and gets nothing more.
    wait_until(
        Duration::from_secs(10),
        "traffic on the new upstream",
        || async {
            seen.lock()
                .unwrap()
                .iter()
                .rev()
                .take(50)
                .all(|r| r.as_deref() == Ok("blue-new"))
        },
    )
    .await;
    let old_count = old.requests();
    wait_until(Duration::from_secs(5), "more traffic", || async {
        new.requests() > 200
    })
    .await;
    assert_eq!(
        old.requests(),
        old_count,
        "the removed upstream got more requests"
    );
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let all = std::mem::take(&mut *seen.lock().unwrap());
    let failed: Vec<_> = all.iter().filter(|r| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        all.len(),
        &failed[..failed.len().min(3)]
    );
    let status = router.status().await;
    let ups = status["sides"]["blue"]["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0]["address"], new.addr.to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_reload_changes_nothing_and_what_needs_an_upgrade_is_named() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g]).start();
    router.wait_all_healthy().await;
    let before = std::fs::read_to_string(&router.config).unwrap();

    // Two problems: both named, with the file; nothing changes.
    edit(
        &router,
        "drain_timeout = \"5s\"",
        "drain_timeout = \"soon\"",
    );
    edit(&router, &g.addr.to_string(), "not an address");
    let (code, out, err) = router.cli(&["reload"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("bluegreen.toml"), "{err}");
    assert!(err.contains("switch.drain_timeout"), "{err}");
    assert!(err.contains("environments.green.upstreams[0]"), "{err}");
    assert_eq!(router.status().await["drain_timeout_ms"], 5000);
    let (code, body) = curl(&[&router.url("/")]);
    assert_eq!((code, body.as_str()), (0, "blue"));

    // A good file: live changes applied, the listen address named as
    // needing an upgrade (and left alone).
    std::fs::write(&router.config, &before).unwrap();
    edit(&router, "drain_timeout = \"5s\"", "drain_timeout = \"7s\"");
    edit(
        &router,
        "[proxy]\nlisten = \"127.0.0.1:0\"",
        "[proxy]\nlisten = \"127.0.0.1:1\"",
    );
    let (code, out, err) = router.cli(&["reload", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["applied"], serde_json::json!(["switch.drain_timeout"]));
    assert_eq!(v["needs_upgrade"], serde_json::json!(["proxy.listen"]));
    assert_eq!(router.status().await["drain_timeout_ms"], 7000);
    let (code, body) = curl(&[&router.url("/")]);
    assert_eq!(
        (code, body.as_str()),
        (0, "blue"),
        "still on the old address"
    );
}
