//! Config parsing and validation: every problem named with its key.

use super::*;

const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
preview_listen = "127.0.0.1:8081"

[admin]
listen = "127.0.0.1:9901"
token_env = "BLUEGREEN_TOKEN"

[state]
dir = ".bluegreen"

[health]
path = "/healthz"
interval = "1s"
timeout = "2s"
healthy_threshold = 2
unhealthy_threshold = 3

[environments.blue]
upstreams = ["127.0.0.1:9001", "127.0.0.1:9003"]

[environments.green]
upstreams = ["127.0.0.1:9002"]

[switch]
drain_timeout = "30s"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml", Path::new("/etc/bg"))
}

fn problems(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn example_config_is_valid() {
    let cfg = parse(GOOD).unwrap();
    assert_eq!(cfg.environments.blue.upstreams.len(), 2);
    assert_eq!(
        cfg.environments[Side::Green].upstreams,
        vec!["127.0.0.1:9002"]
    );
    assert_eq!(cfg.health.interval, Duration::from_secs(1));
    assert_eq!(cfg.switch.drain_timeout, Duration::from_secs(30));
    assert_eq!(cfg.state.dir, PathBuf::from("/etc/bg/.bluegreen"));
    assert_eq!(cfg.proxy.balance, Balance::RoundRobin);
    assert_eq!(cfg.switch.initial_live, Side::Blue);
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = GOOD.replace("[switch]", "[switch]\ndrian_timeout = \"1s\"");
    let msg = problems(&text);
    assert!(msg.contains("test.toml"), "{msg}");
    assert!(msg.contains("drian_timeout"), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn every_unknown_key_is_reported_with_the_other_problems() {
    let text = GOOD
        .replace("[switch]", "[switch]\ndrian_timeout = \"1s\"")
        .replace(
            "[proxy]",
            "[deploy.hooks]\ndeploy = \"x\"\ndeploi = \"y\"\n\n[proxy]",
        )
        .replace("[health]", "[health]\npaht = \"/x\"")
        .replace("interval = \"1s\"", "interval = \"9223372036854775807s\"");
    let err = parse(&text).unwrap_err();
    let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"switch.drian_timeout"), "{err}");
    assert!(keys.contains(&"health.paht"), "{err}");
    assert!(keys.contains(&"deploy.hooks.deploi"), "{err}");
    assert!(keys.contains(&"health.interval"), "{err}");
    assert!(err.to_string().contains("too long"), "{err}");
}

#[test]
fn upstreams_that_loop_repeat_or_cannot_be_reached_are_refused() {
    let cases = [
        // One of our own listeners, by address, by localhost.
        ("127.0.0.1:8080", "own proxy.listen"),
        ("localhost:8081", "own proxy.preview_listen"),
        ("127.0.0.1:9901", "own admin.listen"),
        // The same upstream under two names.
        ("localhost:9001", "already listed"),
        ("127.0.0.1:0", "port 0"),
    ];
    for (extra, want) in cases {
        let text = GOOD.replace(
            "\"127.0.0.1:9003\"]",
            &format!("\"127.0.0.1:9003\", \"{extra}\"]"),
        );
        let msg = problems(&text);
        assert!(msg.contains(want), "{extra}: {msg}");
    }
    let many: Vec<String> = (0..65)
        .map(|i| format!("\"127.0.0.1:{}\"", 20000 + i))
        .collect();
    let text = GOOD.replace(
        "[\"127.0.0.1:9001\", \"127.0.0.1:9003\"]",
        &format!("[{}]", many.join(", ")),
    );
    assert!(problems(&text).contains("at most 64 per side"));
    let text = GOOD
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"")
        .replace("[\"127.0.0.1:9002\"]", "[\"127.0.0.1:8080\"]");
    assert!(problems(&text).contains("own proxy.listen"));
}

#[test]
fn bad_values_are_all_reported_with_keys() {
    let text = GOOD
        .replace("\"127.0.0.1:8080\"", "\"localhost:80:80\"")
        .replace("interval = \"1s\"", "interval = \"1 fortnight\"")
        .replace("[\"127.0.0.1:9002\"]", "[]")
        .replace("healthy_threshold = 2", "healthy_threshold = 0");
    let err = parse(&text).unwrap_err();
    let keys: Vec<_> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert!(keys.contains(&"proxy.listen"), "{err}");
    assert!(keys.contains(&"health.interval"), "{err}");
    assert!(keys.contains(&"environments.green.upstreams"), "{err}");
    assert!(keys.contains(&"health.healthy_threshold"), "{err}");
}

#[test]
fn missing_and_unknown_sides_are_rejected() {
    let text = GOOD.replace("[environments.green]", "[environments.purple]");
    let msg = problems(&text);
    assert!(
        msg.contains("environments.purple: unknown environment"),
        "{msg}"
    );
    assert!(msg.contains("environments.green: missing"), "{msg}");
}

#[test]
fn upstream_shared_by_both_sides_is_rejected() {
    let text = GOOD.replace("[\"127.0.0.1:9002\"]", "[\"127.0.0.1:9001\"]");
    let msg = problems(&text);
    assert!(msg.contains("environments.green.upstreams[0]"), "{msg}");
    assert!(
        msg.contains("already listed at environments.blue.upstreams[0]"),
        "{msg}"
    );
}

#[test]
fn zero_duration_and_bad_upstream_are_rejected() {
    let text = GOOD
        .replace("drain_timeout = \"30s\"", "drain_timeout = \"0s\"")
        .replace("\"127.0.0.1:9003\"", "\"no port here\"");
    let msg = problems(&text);
    assert!(
        msg.contains("switch.drain_timeout: duration \"0s\" must be greater than zero"),
        "{msg}"
    );
    assert!(
        msg.contains("environments.blue.upstreams[1]: invalid upstream"),
        "{msg}"
    );
}

#[test]
fn admin_off_loopback_needs_explicit_opt_in() {
    let text = GOOD.replace("listen = \"127.0.0.1:9901\"", "listen = \"0.0.0.0:9901\"");
    assert!(problems(&text).contains("admin.allow_remote"));
    let text = text.replace("token_env", "allow_remote = true\ntoken_env");
    // Remote, the bearer token needs TLS, or an explicit plaintext opt-in.
    assert!(problems(&text).contains("admin.tls: the admin API listens on 0.0.0.0:9901"));
    let plain = text.replace("token_env", "allow_remote_plaintext = true\ntoken_env");
    assert!(parse(&plain).is_ok());
    let dir = tempfile::tempdir().unwrap();
    for f in ["a.pem", "a.key"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let tls = text.replace(
        "token_env",
        &format!(
            "tls = {{ cert = \"{0}/a.pem\", key = \"{0}/a.key\" }}\ntoken_env",
            dir.path().display()
        ),
    );
    let cfg = parse(&tls).unwrap();
    assert_eq!(cfg.admin.tls.unwrap().cert, dir.path().join("a.pem"));
}

#[test]
fn hostnames_are_valid_upstreams() {
    let text = GOOD.replace("\"127.0.0.1:9003\"", "\"app-2.internal:9003\"");
    assert!(parse(&text).is_ok());
}

const DEPLOY: &str = r#"
[deploy]
deploy_timeout = "30s"

[deploy.supervisor]
run = "./releases/{version}/app --port {port}"

[[deploy.smoke]]
name = "home"
path = "/"
expect_body_contains = "{version}"

[[deploy.smoke]]
name = "script"
command = "sh -c 'curl -fsS {preview_url}/healthz'"

[deploy.bake]
duration = "30s"
interval = "5s"
max_error_rate = 0.05
p99_ratio = 1.5
"#;

#[test]
fn deploy_section_is_parsed() {
    let cfg = parse(&format!("{GOOD}{DEPLOY}")).unwrap();
    let d = cfg.deploy.unwrap();
    assert_eq!(d.smoke.len(), 2);
    assert_eq!(d.bake.thresholds.max_error_rate, 0.05);
    assert_eq!(d.bake.thresholds.p99_ratio, Some(1.5));
    assert_eq!(d.deploy_timeout, Duration::from_secs(30));
    let deploy::DeployMethod::Supervisor(s) = d.method else {
        panic!()
    };
    assert_eq!(
        s.run.render(&[("version", "v2"), ("port", "9002")]),
        vec!["./releases/v2/app", "--port", "9002"]
    );
}

#[test]
fn deploy_mistakes_are_caught_before_anything_runs() {
    let text = format!("{GOOD}{DEPLOY}")
        .replace("--port {port}", "--port {port} --tag {verison}")
        .replace("path = \"/\"\n", "")
        .replace("max_error_rate = 0.05", "max_error_rate = 5")
        .replace("p99_ratio = 1.5", "p99_ratio = 0.5");
    let msg = problems(&text);
    assert!(
        msg.contains("deploy.supervisor.run: unknown placeholder {verison}"),
        "{msg}"
    );
    assert!(msg.contains("deploy.smoke[0]: needs a path"), "{msg}");
    assert!(
        msg.contains("deploy.bake.max_error_rate: 5 is out of range"),
        "{msg}"
    );
    assert!(
        msg.contains("deploy.bake.p99_ratio: 0.5 is out of range"),
        "{msg}"
    );
}

#[test]
fn missing_hook_program_is_named() {
    let text =
        format!("{GOOD}\n[deploy]\n[deploy.hooks]\ndeploy = \"./no-such-hook.sh {{env}}\"\n");
    let msg = problems(&text);
    assert!(
        msg.contains("deploy.hooks.deploy: program \"./no-such-hook.sh\" does not exist"),
        "{msg}"
    );
    let text = format!("{GOOD}\n[deploy]\n[deploy.hooks]\ndeploy = \"true {{env}} {{version}}\"\n");
    assert!(parse(&text).is_ok(), "a program on PATH is found");
}

#[test]
fn acme_alone_is_enough_for_tls_and_its_problems_are_named() {
    let good = format!(
        "{GOOD}\n[tls]\nlisten = \"127.0.0.1:8443\"\n[tls.acme]\ndomains = [\"Shop.Example.com.\", \"www.example.com\"]\ncontact = \"mailto:ops@example.com\"\n"
    );
    let acme = parse(&good).unwrap().tls.unwrap().acme.unwrap();
    assert_eq!(acme.domains, vec!["shop.example.com", "www.example.com"]);
    assert_eq!(acme.directory, tls::LETS_ENCRYPT);
    assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
    assert_eq!(acme.retry_after, Duration::from_secs(60));

    let bad = format!(
        "{GOOD}\n[tls]\nlisten = \"127.0.0.1:8443\"\n[tls.acme]\ndomains = [\"*.example.com\", \"10.0.0.1\"]\n\
         contact = \"ops@example.com\"\ndirectory = \"http://ca.example/dir\"\nca_bundle = \"missing.pem\"\n\
         challenge = \"dns-01\"\nretry_after = \"0s\"\n"
    );
    let msg = problems(&bad);
    for key in [
        "tls.acme.domains[0]: \"*.example.com\" is a wildcard",
        "tls.acme.domains[1]: \"10.0.0.1\" is an IP address",
        "tls.acme.contact",
        "tls.acme.directory",
        "tls.acme.ca_bundle: cannot read /etc/bg/missing.pem",
        "tls.acme.challenge",
        "tls.acme.retry_after",
    ] {
        assert!(msg.contains(key), "{key} missing from:\n{msg}");
    }
    // Without [tls.acme], certificate files are required.
    let none = format!("{GOOD}\n[tls]\nlisten = \"127.0.0.1:8443\"\n");
    assert!(problems(&none).contains("tls.certificates: must list at least one"));
}

#[test]
fn upstream_tls_names_its_problems() {
    let text = GOOD.replace(
        "[switch]",
        "[environments.green.tls]\nserver_name = \"bad name!\"\nca = \"nope.pem\"\n\n[switch]",
    );
    let msg = problems(&text);
    assert!(msg.contains("environments.green.tls.server_name"), "{msg}");
    assert!(
        msg.contains("environments.green.tls.ca: cannot read /etc/bg/nope.pem"),
        "{msg}"
    );
    let ok = GOOD.replace("[switch]", "[environments.blue.tls]\n\n[switch]");
    let cfg = parse(&ok).unwrap();
    assert_eq!(
        cfg.environments.blue.tls,
        Some(UpstreamTlsConfig {
            server_name: None,
            ca: None
        })
    );
    assert_eq!(cfg.environments.green.tls, None);
}

#[test]
fn the_etcd_backend_is_validated_key_by_key() {
    let etcd = |table: &str| {
        GOOD.replace(
            "[state]\ndir = \".bluegreen\"",
            &format!("[state]\ndir = \".bluegreen\"\n{table}"),
        )
    };
    let c = parse(&etcd(
        "backend = \"etcd\"\n[state.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"/bluegreen/shop\"\nnode = \"router-a\"\nconverge_timeout = \"2s\"",
    ))
    .unwrap();
    let e = c.state.etcd.expect("etcd");
    assert_eq!(e.node, "router-a");
    assert_eq!(e.prefix, "/bluegreen/shop");
    assert_eq!(e.converge_timeout, Duration::from_secs(2));
    assert_eq!(e.lease_ttl, Duration::from_secs(5));
    assert_eq!(e.compact_every, Some(Duration::from_secs(300)));
    assert_eq!(e.keep_revisions, 1000);
    let base = "backend = \"etcd\"\n[state.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
    let off = parse(&etcd(&format!(
        "{base}compact_every = \"off\"\nkeep_revisions = 50"
    )))
    .unwrap()
    .state
    .etcd
    .unwrap();
    assert_eq!((off.compact_every, off.keep_revisions), (None, 50));
    let p = problems(&etcd(&format!(
        "{base}compact_every = \"never\"\nkeep_revisions = 0"
    )));
    assert!(p.contains("state.etcd.compact_every"), "{p}");
    assert!(p.contains("state.etcd.keep_revisions"), "{p}");
    assert!(problems(&etcd(&format!("{base}compact = true"))).contains("compact"));
    // The file store stays the default, with nothing to set.
    assert!(parse(GOOD).unwrap().state.etcd.is_none());
    let p = problems(&etcd(
        "backend = \"etcd\"\n[state.etcd]\nendpoints = [\"127.0.0.1:2379\"]\nprefix = \"shop/\"\nnode = \"a b\"\nlease_ttl = \"1s\"\npassword_env = \"PW\"",
    ));
    for key in [
        "state.etcd.endpoints[0]",
        "state.etcd.prefix",
        "state.etcd.node",
        "state.etcd.lease_ttl",
        "state.etcd.password_env",
    ] {
        assert!(p.contains(key), "{key} not named in:\n{p}");
    }
    assert!(problems(&etcd("backend = \"etcd\"")).contains("[state.etcd] table"));
    assert!(problems(&etcd("backend = \"consul\"")).contains("unknown backend"));
    assert!(problems(&etcd(
        "[state.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]"
    ))
    .contains("backend = \"etcd\""));
}

/// `[[deploy.analysis]]`: each entry checked with its index and key; a
/// good one parses with its limits.
#[test]
fn analysis_metrics_are_validated_with_their_index() {
    let hooks = "[deploy.hooks]\ndeploy = \"/bin/sh -c true {env} {version}\"\n";
    let sup = "[deploy.supervisor]\nrun = \"/bin/sh -c true {address}\"\n";
    let good = format!(
        "{GOOD}{sup}
[[deploy.analysis]]
name = \"errors\"
source = \"prometheus\"
address = \"http://127.0.0.1:9090\"
query = 'sum(rate(http_errors{{version=\"{{version}}\"}}[{{window}}]))'
max = 0.5
max_ratio = 2.0
consecutive = 2

[[deploy.analysis]]
name = \"memory\"
source = \"app\"
metric = \"rss\"
max = 512
"
    );
    let c = parse(&good).unwrap();
    let a = &c.deploy.as_ref().unwrap().analysis;
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].consecutive, 2);
    assert_eq!(a[0].limits.max_ratio, Some(2.0));
    assert_eq!(a[1].limits.max, Some(512.0));

    let bad = format!(
        "{GOOD}{hooks}
[[deploy.analysis]]
name = \"a\"
source = \"prometheus\"
address = \"prom:9090\"
query = \"up\"
max = 1

[[deploy.analysis]]
name = \"b\"
source = \"web\"
url = \"http://x/{{bogus}}\"
pointer = \"/v\"
max = 1

[[deploy.analysis]]
name = \"c\"
source = \"app\"
metric = \"rss\"

[[deploy.analysis]]
name = \"d\"
source = \"web\"
url = \"http://x/\"
pointer = \"/v\"
"
    );
    let p = problems(&bad);
    assert!(p.contains("deploy.analysis[0].address"), "{p}");
    assert!(
        p.contains("deploy.analysis[1].url") && p.contains("{bogus}"),
        "{p}"
    );
    assert!(
        p.contains("deploy.analysis[2].source") && p.contains("[deploy.supervisor]"),
        "{p}"
    );
    assert!(
        p.contains("deploy.analysis[3].max") && p.contains("no limit"),
        "{p}"
    );
}

#[test]
fn migration_timing_has_short_lock_waits_by_default_and_bad_values_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let with = |more: &str| {
        format!(
            "{GOOD}\n[deploy]\n[deploy.hooks]\ndeploy = \"true {{env}} {{version}}\"\n[deploy.migrations]\ndir = \"{}\"\n{more}",
            dir.path().display()
        )
    };
    let m = parse(&with(""))
        .unwrap()
        .deploy
        .unwrap()
        .migrations
        .unwrap();
    assert_eq!(m.timing.lock_timeout, Duration::from_millis(200));
    assert_eq!(m.timing.deadline, Duration::from_secs(60));
    assert_eq!(m.timing.statement_timeout, Duration::from_secs(300));
    let m = parse(&with(
        "lock_timeout = \"50ms\"\ndeadline = \"2m\"\nstatement_timeout = \"30s\"\n",
    ))
    .unwrap()
    .deploy
    .unwrap()
    .migrations
    .unwrap();
    assert_eq!(m.timing.lock_timeout, Duration::from_millis(50));
    assert_eq!(m.timing.deadline, Duration::from_secs(120));
    assert_eq!(m.timing.statement_timeout, Duration::from_secs(30));
    // Every problem at once, each with its key.
    let msg = problems(&with(
        "lock_timeout = \"500us\"\nstatement_timeout = \"0s\"\nlock_timeout_x = 1\n",
    ));
    for want in [
        "deploy.migrations.lock_timeout: must be at least 1ms",
        "deploy.migrations.statement_timeout: duration \"0s\" must be greater than zero",
        "deploy.migrations.lock_timeout_x: unknown key",
    ] {
        assert!(msg.contains(want), "{want}: {msg}");
    }
    let msg = problems(&with("lock_timeout = \"2s\"\ndeadline = \"1s\"\n"));
    assert!(
        msg.contains("deploy.migrations.deadline: 1s is shorter than lock_timeout (2s)"),
        "{msg}"
    );
}

/// `[router]`: builtin by default; nginx needs its main file, the include's
/// directory, an upstream name and a loopback probe; kinds this version
/// does not drive are refused by name.
#[test]
fn a_driven_router_is_checked_key_by_key() {
    assert_eq!(parse(GOOD).unwrap().router, router::RouterKind::Builtin);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nginx.conf"), "events {}\n").unwrap();
    let base = dir.path().to_path_buf();
    let with =
        |table: &str| Config::parse(&format!("{GOOD}\n[router]\n{table}"), "test.toml", &base);
    let good = with(
        "kind = \"nginx\"\n[router.nginx]\nconfig = \"nginx.conf\"\ninclude = \"bluegreen.conf\"\n\
         upstream = \"app\"\nprobe_listen = \"127.0.0.1:9911\"\n",
    )
    .unwrap();
    match &good.router {
        router::RouterKind::Nginx(n) => {
            assert_eq!(n.config, base.join("nginx.conf"));
            assert_eq!(n.include, base.join("bluegreen.conf"));
            assert_eq!(n.binary, "nginx");
            assert_eq!(n.reload_timeout, Duration::from_secs(10));
        }
        other => panic!("{other:?}"),
    }

    let msg = with(
        "kind = \"nginx\"\n[router.nginx]\nconfig = \"missing.conf\"\ninclude = \"no/such/dir/b.conf\"\n\
         upstream = \"my-app\"\nprobe_listen = \"10.0.0.1:9911\"\n",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "router.nginx.config: cannot read",
        "router.nginx.include: ",
        "its directory does not exist",
        "router.nginx.upstream: \"my-app\" is not an nginx upstream name",
        "router.nginx.probe_listen: 10.0.0.1:9911 is not a loopback address",
    ] {
        assert!(msg.contains(expected), "{expected}: {msg}");
    }
    std::fs::create_dir(base.join("conf.d")).unwrap();
    let msg = with(
        "kind = \"nginx\"\n[router.nginx]\nconfig = \"nginx.conf\"\ninclude = \"conf.d\"\n\
         upstream = \"app\"\nprobe_listen = \"127.0.0.1:0\"\npreview_listen = \"127.0.0.1:8080\"\n",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "conf.d is a directory",
        "router.nginx.probe_listen: 127.0.0.1:0: nginx needs a port of its own here",
        "router.nginx.preview_listen: 127.0.0.1:8080 is already used by proxy.listen",
    ] {
        assert!(msg.contains(expected), "{expected}: {msg}");
    }
    let msg = with("kind = \"nginx\"\n").unwrap_err().to_string();
    assert!(msg.contains("router.nginx: is required"), "{msg}");
    // Kubernetes and ALB: dry runs only, said in so many words.
    let good = with(
        "kind = \"kubernetes\"\n[router.kubernetes]\nnamespace = \"shop\"\nservice = \"web\"\ndry_run = true\n",
    )
    .unwrap();
    match &good.router {
        router::RouterKind::Kubernetes(k) => {
            assert_eq!(k.api, "https://kubernetes.default.svc");
            assert_eq!(
                (k.namespace.as_str(), k.service.as_str(), k.label.as_str()),
                ("shop", "web", "slot")
            );
        }
        other => panic!("{other:?}"),
    }
    let msg = with(
        "kind = \"kubernetes\"\n[router.kubernetes]\nservice = \"Web_1\"\napi = \"kubernetes\"\n",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "router.kubernetes.dry_run: must be true",
        "router.kubernetes.service: \"Web_1\" is not a Kubernetes name",
        "router.kubernetes.api: \"kubernetes\" is not a URL",
    ] {
        assert!(msg.contains(expected), "{expected}: {msg}");
    }
    let arn = |kind: &str, name: &str| {
        format!("arn:aws:elasticloadbalancing:eu-west-1:123456789012:{kind}/{name}/0123")
    };
    let good = with(&format!(
        "kind = \"alb\"\n[router.alb]\nregion = \"eu-west-1\"\nlistener_arn = \"{}\"\n\
         blue_target_group = \"{}\"\ngreen_target_group = \"{}\"\ndry_run = true\n",
        arn("listener", "app/web"),
        arn("targetgroup", "blue"),
        arn("targetgroup", "green"),
    ))
    .unwrap();
    assert!(matches!(good.router, router::RouterKind::Alb(_)));
    let msg = with(&format!(
        "kind = \"alb\"\n[router.alb]\nregion = \"EU\"\nlistener_arn = \"{}\"\ndry_run = false\n",
        arn("targetgroup", "blue"),
    ))
    .unwrap_err()
    .to_string();
    for expected in [
        "router.alb.dry_run: must be true",
        "router.alb.region: \"EU\" is not an AWS region",
        "router.alb.listener_arn: \"arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/blue/0123\" is not an ELB listener ARN",
        "router.alb.blue_target_group: is required",
    ] {
        assert!(msg.contains(expected), "{expected}: {msg}");
    }

    // HAProxy: its runtime API, its main file, the map bluegreen writes,
    // and the backends' common name.
    std::fs::write(dir.path().join("haproxy.cfg"), "global\n").unwrap();
    let good = with(&format!(
        "kind = \"haproxy\"\n[router.haproxy]\nsocket = \"admin.sock\"\nconfig = \"haproxy.cfg\"\n\
         map = \"{}\"\nbackend = \"app\"\n",
        base.join("bluegreen.map").display()
    ))
    .unwrap();
    match &good.router {
        router::RouterKind::Haproxy(h) => {
            assert_eq!(h.socket, base.join("admin.sock"));
            assert_eq!(h.map, base.join("bluegreen.map"));
            assert_eq!(h.backend_of(crate::Side::Green), "app_green");
            assert_eq!(h.binary, "haproxy");
            assert_eq!(h.timeout, Duration::from_secs(5));
        }
        other => panic!("{other:?}"),
    }
    let msg = with(
        "kind = \"haproxy\"\n[router.haproxy]\nconfig = \"nope.cfg\"\nmap = \"no/dir/b.map\"\n\
         backend = \"my app\"\n[router.nginx]\nconfig = \"nginx.conf\"\n",
    )
    .unwrap_err()
    .to_string();
    for expected in [
        "router.haproxy.socket: is required",
        "router.haproxy.config: cannot read",
        "router.haproxy.map: \"no/dir/b.map\" is relative: give the absolute path",
        "router.haproxy.backend: \"my app\" is not a HAProxy backend name",
        "router.nginx: is used only with router.kind = \"nginx\" (the kind is \"haproxy\")",
    ] {
        assert!(msg.contains(expected), "{expected}: {msg}");
    }
    let msg = with("kind = \"haproxy\"\n").unwrap_err().to_string();
    assert!(msg.contains("router.haproxy: is required"), "{msg}");
    let msg = with(
        "kind = \"haproxy\"\n[router.haproxy]\nsocket = \"a.sock\"\nconfig = \"haproxy.cfg\"\n\
         map = \"/etc/haproxy/blue green.map\"\nbackend = \"app\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("a path with spaces or ';' cannot be named"),
        "{msg}"
    );
    let msg = with("kind = \"traefik\"\n").unwrap_err().to_string();
    assert!(msg.contains("unknown router \"traefik\""), "{msg}");
}

/// `[[notify]]`: each hook named once, a URL, known kinds and format, a
/// variable name for the secret; every kind by default.
#[test]
fn notify_hooks_are_checked_entry_by_entry() {
    let good = parse(&format!(
        "{GOOD}\n[[notify]]\nname = \"ops\"\nurl = \"https://hooks.example.com/x\"\n\
         [[notify]]\nname = \"chat\"\nurl = \"http://127.0.0.1:9/in\"\nformat = \"slack\"\n\
         events = [\"rolled_back\"]\nsecret_env = \"HOOK_SECRET\"\nretry_for = \"1h\"\n"
    ))
    .unwrap();
    assert_eq!(good.notify.len(), 2);
    assert_eq!(good.notify[0].events.len(), notify::KINDS.len());
    assert_eq!(good.notify[0].format, notify::Format::CloudEvents);
    assert_eq!(good.notify[0].retry_for, Duration::from_secs(24 * 3600));
    assert_eq!(good.notify[1].format, notify::Format::Slack);
    assert_eq!(good.notify[1].events, vec!["rolled_back".to_string()]);
    assert_eq!(good.notify[1].retry_for, Duration::from_secs(3600));
    let teams = parse(&format!(
        "{GOOD}\n[[notify]]\nname = \"t\"\nurl = \"https://x.example/w\"\nformat = \"teams\"\n"
    ))
    .unwrap();
    assert_eq!(teams.notify[0].format, notify::Format::Teams);

    let msg = problems(&format!(
        "{GOOD}\n[[notify]]\nname = \"ops\"\nurl = \"ftp://x\"\nformat = \"msteams\"\nevents = [\"deployed\"]\n\
         secret_env = \"MY-SECRET\"\n[[notify]]\nname = \"ops\"\nurl = \"https://x.example\"\n[[notify]]\nurl = \"https://y.example\"\n"
    ));
    for expected in [
        "notify[0].url: \"ftp://x\" is not an http:// or https:// URL",
        "notify[0].format: unknown format \"msteams\"",
        "notify[0].events: unknown event \"deployed\"",
        "notify[0].secret_env: \"MY-SECRET\" is not a variable name",
        "notify[1].name: \"ops\" is used by another [[notify]] entry",
        "notify[2].name: missing",
    ] {
        assert!(msg.contains(expected), "{expected}: {msg}");
    }
}
