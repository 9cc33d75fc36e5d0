//! The dashboard in a real browser: headless Chromium (Debian's `chromium`,
//! driven through `chromedriver` by WebDriver) against the real router with
//! two real upstreams. Logs in with the token, reads the live side, switches
//! through the confirmation dialog and sees the page change without a
//! reload; a screenshot is kept as a test artifact.

use crate::support::*;
use fantoccini::{ClientBuilder, Locator};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// chromedriver, killed when the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn text_of(c: &fantoccini::Client, id: &str) -> String {
    c.execute(
        &format!("return document.getElementById('{id}')?.textContent ?? ''"),
        vec![],
    )
    .await
    .unwrap()
    .as_str()
    .unwrap_or("")
    .trim()
    .to_string()
}

async fn hidden(c: &fantoccini::Client, id: &str) -> bool {
    c.execute(
        &format!("return document.getElementById('{id}').hidden"),
        vec![],
    )
    .await
    .unwrap()
    .as_bool()
    .unwrap()
}

/// Polls `f` until it returns true, failing after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// chromedriver and a headless Chromium session with a window of `size`
/// ("W,H"); the profile dir lives as long as the returned guard.
async fn browser(size: &str) -> (Driver, fantoccini::Client, tempfile::TempDir) {
    let port = closed_port().port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver is installed (scripts/test installs chromium and chromium-driver)",
            ),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    wait_until(
        Duration::from_secs(15),
        "chromedriver listening",
        || async { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
    )
    .await;
    let profile = tempfile::tempdir().unwrap();
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--no-first-run", format!("--window-size={size}"),
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .expect("a Chromium session");
    (driver, c, profile)
}

/// Logs in with the token and waits for the dashboard.
async fn log_in(c: &fantoccini::Client, router: &RouterProc) {
    c.goto(&format!("{}/", router.admin_url())).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    c.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the dashboard", || async {
        !hidden(c, "dashboard-view").await
    })
    .await;
}

/// Keeps a screenshot as a test artifact.
async fn keep_screenshot(c: &fantoccini::Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join(name);
    std::fs::write(&shot, png).unwrap();
    eprintln!("dashboard screenshot: {}", shot.display());
}

/// The element's box: (top, bottom, the viewport's height) in CSS pixels.
async fn box_of(c: &fantoccini::Client, id: &str) -> (f64, f64, f64) {
    let v = c
        .execute(
            &format!("const r = document.getElementById('{id}').getBoundingClientRect(); return [r.top, r.bottom, window.innerHeight];"),
            vec![],
        )
        .await
        .unwrap();
    let a = v.as_array().unwrap();
    (
        a[0].as_f64().unwrap(),
        a[1].as_f64().unwrap(),
        a[2].as_f64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_release_shows_its_breach_above_the_fold_in_colours_of_health() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    let router = RouterBuilder::new(&[&b], &[&g])
        .extra(
            "[deploy]\ndeploy_timeout = \"5s\"\n[deploy.hooks]\ndeploy = \"true\"\n\
             [deploy.bake]\nduration = \"20s\"\ninterval = \"500ms\"\nmin_requests = 20\nmax_error_rate = 0.05\non_inconclusive = \"accept\"\n",
        )
        .start();
    router.wait_all_healthy().await;
    let (_driver, c, _profile) = browser("1400,1000").await;
    log_in(&c, &router).await;
    // The header pill is neutral: colour there says health, not a side.
    let pill = c
        .execute(
            "return document.getElementById('live-side').className",
            vec![],
        )
        .await
        .unwrap();
    assert!(pill.as_str().unwrap().contains("neutral"), "{pill}");
    assert!(hidden(&c, "release").await, "no release yet");

    // Live traffic that the new version (green) answers with 500s.
    let url = router.url("/fail");
    let load = Traffic::start(move |_| url.clone());
    router.start_deploy("{\"version\":\"v2\"}").await;
    // During the release: the release view is at the top with its steps.
    eventually(Duration::from_secs(10), "the release view", || async {
        !hidden(&c, "release").await && text_of(&c, "release-title").await.contains("v2")
    })
    .await;
    // The breach: in words and the colour of a breach, above the fold of a
    // 1400×1000 window, the new side beside the baseline with the limit.
    eventually(Duration::from_secs(20), "the breach shown", || async {
        let v = text_of(&c, "release-verdict").await;
        v == "breach" || v == "rolled back"
    })
    .await;
    load.stop().await;
    let release = text_of(&c, "release").await;
    assert!(
        release.contains("breach:") && release.contains("error rate"),
        "{release}"
    );
    let class = c
        .execute(
            "return document.getElementById('release').className",
            vec![],
        )
        .await
        .unwrap();
    assert!(class.as_str().unwrap().contains("breach"), "{class}");
    let (top, bottom, fold) = box_of(&c, "release-bake").await;
    assert!(fold > 800.0, "a window of about 1000 px: {fold}");
    assert!(
        top >= 0.0 && bottom <= fold,
        "breach at {top}..{bottom}, below the fold"
    );
    let badge = text_of(&c, "health-badge").await;
    assert!(badge == "breach" || badge == "rolled back", "{badge}");
    keep_screenshot(&c, "bad-release.png").await;
    // The automatic rollback is labelled as such in the history, not as forced.
    eventually(
        Duration::from_secs(10),
        "the rollback in the history",
        || async { text_of(&c, "history").await.contains("automatic rollback") },
    )
    .await;
    assert!(!text_of(&c, "history").await.contains("(forced)"));
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_logs_in_shows_the_live_side_and_switches_without_a_reload() {
    let (b, g) = (Backend::start("blue").await, Backend::start("green").await);
    // With HTTPS on, so the certificates panel has something to show.
    let pki = crate::tls::Pki::new();
    let (cert, key) = pki.issue("shop", &["shop.test"], false);
    let router = RouterBuilder::new(&[&b], &[&g])
        .extra(&format!(
            "\n[tls]\nlisten = \"127.0.0.1:0\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            cert.display(),
            key.display()
        ))
        .start();
    router.wait_all_healthy().await;

    let (_driver, c, _profile) = browser("1280,1000").await;
    // 1. Without the token: a login and no data.
    let page = format!("{}/", router.admin_url());
    c.goto(&page).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    assert!(!hidden(&c, "login-view").await);
    assert!(hidden(&c, "dashboard-view").await);
    assert_eq!(
        text_of(&c, "live-side").await.trim_matches('–'),
        "",
        "no data before login"
    );

    // 2. A wrong token is refused and stays on the login.
    c.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("not-the-token")
        .await
        .unwrap();
    c.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the wrong-token message",
        || async { text_of(&c, "error-text").await.contains("wrong token") },
    )
    .await;
    assert!(hidden(&c, "dashboard-view").await);

    // 3. The right token: the dashboard shows blue live.
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(TOKEN).await.unwrap();
    c.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "blue shown live", || async {
        text_of(&c, "live-side").await == "blue"
    })
    .await;
    assert!(hidden(&c, "login-view").await);
    assert!(!hidden(&c, "certs-panel").await);
    let certs = text_of(&c, "certs").await;
    assert!(
        certs.contains("shop.test")
            && certs.contains("bluegreen test CA")
            && certs.contains("days"),
        "{certs}"
    );
    let url = c.current_url().await.unwrap();
    assert!(
        !url.as_str().contains(TOKEN),
        "the token must never be in a URL: {url}"
    );

    // 3b. An upstream that fails shows its last error; healthy again, it
    // shows none (the error stays in the status, from the failure before).
    let errors = || async {
        c.execute(
            "return [...document.querySelectorAll('.last-error')].map((e) => e.textContent).join('|')",
            vec![],
        )
        .await
        .unwrap()
        .as_str()
        .unwrap_or_default()
        .to_string()
    };
    g.set_healthy(false);
    eventually(
        Duration::from_secs(10),
        "green's last error shown",
        || async { errors().await.contains("last error") },
    )
    .await;
    g.set_healthy(true);
    router.wait_all_healthy().await;
    eventually(
        Duration::from_secs(10),
        "no last error under a healthy upstream",
        || async { errors().await.is_empty() },
    )
    .await;
    // The same after a full reload, from the status alone.
    c.refresh().await.unwrap();
    eventually(Duration::from_secs(10), "blue shown live again", || async {
        text_of(&c, "live-side").await == "blue"
    })
    .await;
    assert_eq!(errors().await, "", "after a reload");

    // 4. Switch through the confirmation; the page updates in place.
    c.execute("window.__sameDocument = 'yes'", vec![])
        .await
        .unwrap();
    c.find(Locator::Id("btn-switch"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the confirmation dialog",
        || async {
            c.execute("return document.getElementById('confirm').open", vec![])
                .await
                .unwrap()
                .as_bool()
                == Some(true)
        },
    )
    .await;
    let question = text_of(&c, "confirm-text").await;
    assert!(
        question.contains("blue") && question.contains("green"),
        "{question}"
    );
    assert_eq!(
        router.status().await["live"],
        "blue",
        "nothing happens before confirming"
    );
    c.find(Locator::Id("confirm-yes"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "green shown live", || async {
        text_of(&c, "live-side").await == "green"
    })
    .await;
    assert_eq!(router.status().await["live"], "green");
    let same = c
        .execute("return window.__sameDocument ?? 'reloaded'", vec![])
        .await
        .unwrap();
    assert_eq!(same, "yes", "the page changed without a reload");

    // A weighted split shows on both side cards, from the event stream.
    let (status, body) = router
        .api(
            "POST",
            "/api/v1/weight",
            Some(r#"{"side": "blue", "percent": 10}"#),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(10),
        "the split on the cards",
        || async {
            text_of(&c, "policies-blue")
                .await
                .contains("10% of clients")
                && text_of(&c, "policies-green")
                    .await
                    .contains("90% of clients")
        },
    )
    .await;

    // 5. The screenshot, kept as an artifact.
    keep_screenshot(&c, "dashboard.png").await;
    c.close().await.unwrap();
}
