//! etcd's history kept bounded (real etcd): the nodes compact behind
//! themselves and keep converging, and `check` says whether anything
//! compacts.

use crate::support::*;
use bluegreen_store::etcd::client::Client;
use bluegreen_store::etcd::testing::EtcdServer;
use std::time::Duration;

fn etcd_config(endpoint: &str, prefix: &str) -> bluegreen_core::config::EtcdConfig {
    bluegreen_core::config::EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        prefix: prefix.to_string(),
        node: "test".into(),
        username: None,
        password_env: None,
        tls: None,
        converge_timeout: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(5),
        forget_after: Duration::from_secs(3600),
        compact_every: None,
        keep_revisions: 1000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_nodes_compact_etcds_history_behind_them_and_keep_converging() {
    let etcd = EtcdServer::start();
    let ep = [etcd.client_url.as_str()];
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let more = "compact_every = \"1s\"\nkeep_revisions = 10";
    let [a, b] = ["a", "b"].map(|n| {
        RouterBuilder::new(&[&blue], &[&green])
            .etcd(&ep, "/bluegreen/c1", n, more)
            .start()
    });
    for n in [&a, &b] {
        n.wait_all_healthy().await;
        wait_until(Duration::from_secs(10), "both nodes listed", || async {
            n.status().await["cluster"]["nodes"]
                .as_array()
                .is_some_and(|x| x.len() == 2)
        })
        .await;
    }
    let client = Client::new(&etcd_config(ep[0], "/bluegreen/c1")).unwrap();
    let early = client.status().await.unwrap().revision;
    assert!(!client
        .compacted_at("/bluegreen/c1/state", early)
        .await
        .unwrap());
    // Many writes: switches through either node, each applied by both.
    for i in 0..12 {
        let (n, side) = if i % 2 == 0 {
            (&a, "green")
        } else {
            (&b, "blue")
        };
        let out = n.switch_to(side).await;
        assert_eq!(out["converged"]["stale"], serde_json::json!([]), "{out}");
    }
    let later = client.status().await.unwrap().revision;
    assert!(later > early + 20, "{early} -> {later}");
    // Old history goes; what is kept stays readable.
    wait_until(
        Duration::from_secs(15),
        "old revisions compacted",
        || async {
            client
                .compacted_at("/bluegreen/c1/state", early)
                .await
                .unwrap()
        },
    )
    .await;
    let now = client.status().await.unwrap().revision;
    assert!(!client
        .compacted_at("/bluegreen/c1/state", now)
        .await
        .unwrap());
    // The nodes keep converging on what comes next.
    let out = a.switch_to("green").await;
    assert_eq!(out["converged"]["stale"], serde_json::json!([]), "{out}");
    for n in [&a, &b] {
        let s = n.status().await;
        assert_eq!(s["live"], "green", "{s}");
        assert_eq!(s["cluster"]["connected"], true, "{s}");
    }
    let (code, body) = curl(&[&b.url("/")]);
    assert_eq!((code, body.as_str()), (0, "green"));
}

/// `bluegreen check` with a config: the state's store and its config.
fn check(etcd: &EtcdServer, more: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bluegreen.toml");
    let text = RouterBuilder::addrs(
        vec!["127.0.0.1:9".parse().unwrap()],
        vec!["127.0.0.1:10".parse().unwrap()],
    )
    .etcd(&[&etcd.client_url], "/bluegreen/c2", "a", more)
    .config_text(dir.path());
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_says_whether_etcds_history_is_compacted_and_by_whom() {
    let etcd = EtcdServer::start();
    let client = Client::new(&etcd_config(&etcd.client_url, "/bluegreen/c2")).unwrap();
    for i in 0..5 {
        client
            .put("/bluegreen/c2/state", format!("{i}").as_bytes(), None)
            .await
            .unwrap();
    }
    // Ours on (the default): said, with what it keeps.
    let (code, out, err) = check(&etcd, "");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("reachable") && out.contains("revision"),
        "{out}"
    );
    assert!(
        out.contains("history compacted by the nodes every 5m, keeping 1000 revisions"),
        "{out}"
    );
    // Off, and nothing else compacts: a warning.
    let (code, _, err) = check(&etcd, "compact_every = \"off\"");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: state.etcd: nothing compacts"),
        "{err}"
    );
    // Off, and etcd compacted by something else: said so.
    let rev = client.status().await.unwrap().revision;
    client.compact(rev).await.unwrap();
    let (_, out, err) = check(&etcd, "compact_every = \"off\"");
    assert!(out.contains("compacted by something else"), "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
    // etcd gone: a warning naming it, the config still valid.
    drop(etcd);
    let dead = EtcdServer::start();
    let url = dead.client_url.clone();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bluegreen.toml");
    let text = RouterBuilder::addrs(
        vec!["127.0.0.1:9".parse().unwrap()],
        vec!["127.0.0.1:10".parse().unwrap()],
    )
    .etcd(&[&url], "/bluegreen/c2", "a", "")
    .config_text(dir.path());
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning: state.etcd:") && err.contains(&url),
        "{err}"
    );
}
