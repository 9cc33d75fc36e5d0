//! Weighted splits (`bluegreen weight`): the share of clients measured over
//! 10,000 of them, each client always on one side, ended by 0 or a switch,
//! kept across a restart.

use crate::support::*;
use std::time::Duration;

/// `n` requests, one per client `client-{offset+i}` (by the sticky
/// header), 64 at a time; how many were answered by green, and the answers
/// per client.
async fn share(router: &RouterProc, clients: std::ops::Range<u32>) -> (usize, Vec<(u32, String)>) {
    use futures_util::StreamExt;
    let c = h1_client_with_header();
    let url = router.url("/shop");
    let answers: Vec<(u32, String)> = futures_util::stream::iter(clients)
        .map(|i| {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let req = http::Request::get(&url)
                    .header("x-user", format!("client-{i}"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
                    .await
                    .expect("answered in time")
                    .expect("answered");
                assert_eq!(resp.status(), 200);
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                (i, String::from_utf8_lossy(&body).to_string())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    (
        answers.iter().filter(|(_, b)| b == "green").count(),
        answers,
    )
}

fn h1_client_with_header() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
> {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ten_percent_weight_sends_a_tenth_of_the_clients_always_the_same_ones() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let state = tempfile::tempdir().unwrap();
    let builder = || {
        RouterBuilder::new(&[&b], &[&g])
            .state_dir(state.path())
            .proxy("sticky_header = \"X-User\"")
    };
    let router = builder().start();
    router.wait_all_healthy().await;
    let (code, out, err) = router.cli(&["weight", "green", "10"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(router.status().await["split"]["basis_points"], 1000);
    let (_, text, _) = router.cli(&["status"]);
    assert!(
        text.contains("weight: 10.00 % of live clients go to green"),
        "{text}"
    );

    // 10,000 clients: within one percentage point of 10 %.
    let (green, _) = share(&router, 0..10_000).await;
    assert!(
        (900..=1100).contains(&green),
        "{green} of 10000 clients on green, not 10 % ± 1 point"
    );
    // The same clients again: each lands where it did.
    let (_, first) = share(&router, 0..500).await;
    let (_, again) = share(&router, 0..500).await;
    let mut first = first;
    let mut again = again;
    first.sort();
    again.sort();
    assert_eq!(first, again, "a client moved sides");

    // The metrics say the split; it survives a restart.
    let metrics = reqwest_metrics(&router).await;
    assert!(
        metrics.contains("bluegreen_weight_basis_points{side=\"green\"} 1000"),
        "{metrics}"
    );
    drop(router);
    let router = builder().start();
    router.wait_all_healthy().await;
    let (green_after, _) = share(&router, 0..2_000).await;
    assert!(green_after > 100 && green_after < 300, "{green_after}");

    // Refusals: the live side, 100 %.
    let (code, _, err) = router.cli(&["weight", "blue", "10"]);
    assert_eq!(code, 1);
    assert!(err.contains("blue is live"), "{err}");
    let (code, _, err) = router.cli(&["weight", "green", "100"]);
    assert_eq!(code, 2, "a bad_request is a usage error");
    assert!(err.contains("100 is a switch"), "{err}");

    // A switch ends the split: every client on green.
    router.switch_to("green").await;
    assert!(router.status().await["split"].is_null());
    let (green, _) = share(&router, 0..1_000).await;
    assert_eq!(green, 1_000);
    // 0 ends it too (after a new split to blue).
    let (code, out, err) = router.cli(&["weight", "blue", "25"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = router.cli(&["weight", "blue", "0"]);
    assert_eq!(code, 0);
    let (green, _) = share(&router, 0..1_000).await;
    assert_eq!(green, 1_000);
}

async fn reqwest_metrics(router: &RouterProc) -> String {
    let auth = format!("authorization: Bearer {TOKEN}");
    let (code, body) = curl(&["-H", &auth, &format!("{}/metrics", router.admin_url())]);
    assert_eq!(code, 0);
    body
}
