//! Property tests of the pure core: router state transitions and bake
//! verdicts hold their invariants for any sequence and any window.

use bluegreen_core::bake::{judge, needed_for, Thresholds, Verdict, Window};
use bluegreen_core::latency::{bucket, Histogram};
use bluegreen_core::state::{RouterState, SwitchKind, SwitchRequest, HISTORY_LIMIT};
use bluegreen_core::Side;
use proptest::prelude::*;
use std::time::Duration;

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Blue), Just(Side::Green)]
}

proptest! {
    /// Any sequence of switches and rollbacks: the generation counts the
    /// changes, live is where the last change went, history stays bounded
    /// and the state always validates.
    #[test]
    fn switch_sequences_keep_the_state_consistent(
        start in side(),
        steps in proptest::collection::vec((side(), any::<bool>(), any::<bool>()), 0..300),
    ) {
        let mut s = RouterState::initial(start);
        let mut changes = 0u64;
        for (to, rollback, forced) in steps {
            let target = if rollback { s.rollback_target().ok() } else { Some(to) };
            let Some(to) = target else { continue };
            let req = SwitchRequest {
                to,
                kind: if rollback { SwitchKind::Rollback } else { SwitchKind::Switch },
                forced,
                actor: "prop".into(),
                reason: "prop".into(),
            };
            match s.switched(&req, "t".into(), changes) {
                Ok(next) => {
                    changes += 1;
                    prop_assert_eq!(next.generation, s.generation + 1);
                    prop_assert_eq!(next.live, to);
                    prop_assert_eq!(next.rollback_target().ok(), Some(s.live));
                    s = next;
                }
                Err(_) => prop_assert_eq!(to, s.live, "only a switch to the live side is refused"),
            }
            prop_assert!(s.validate().is_ok());
            prop_assert!(s.history.len() <= HISTORY_LIMIT);
        }
        prop_assert_eq!(s.generation, changes);
    }
}

fn window(requests: u64, errors: u64, latencies_us: &[u64]) -> Window {
    let mut latency = Histogram::default();
    for (i, us) in latencies_us.iter().enumerate() {
        if (i as u64) < requests {
            latency.counts[bucket(Duration::from_micros(*us))] += 1;
        }
    }
    Window {
        requests,
        errors,
        client_errors: 0,
        named_4xx: [0; 4],
        latency,
    }
}

fn thresholds() -> Thresholds {
    Thresholds {
        min_requests: 20,
        max_error_rate: 0.05,
        significance: 0.001,
        max_p99: Some(Duration::from_millis(50)),
        error_rate_ratio: Some(2.0),
        p99_ratio: Some(1.5),
        max_4xx_increase: Some(0.2),
        latency_shift: None,
    }
}

proptest! {
    /// More errors in the same window never turn a breach into a pass.
    #[test]
    fn more_errors_never_judge_better(
        requests in 20u64..2000,
        errors in 0u64..2000,
        extra in 1u64..200,
        lat in proptest::collection::vec(100u64..200_000, 0..2000),
    ) {
        let errors = errors.min(requests);
        let worse = (errors + extra).min(requests);
        let t = thresholds();
        let a = judge(&window(requests, errors, &lat), None, &t);
        let b = judge(&window(requests, worse, &lat), None, &t);
        if matches!(a, Verdict::Breach(ref x) if x.metric == "error_rate") {
            prop_assert!(matches!(b, Verdict::Breach(ref y) if y.metric == "error_rate"), "{a:?} then {b:?}");
        }
    }

    /// Latency is never a breach without enough requests for its p99, and
    /// a window below min_requests is never judged at all.
    #[test]
    fn a_p99_needs_its_tail(
        requests in 0u64..(needed_for(0.99) - 1),
        lat in proptest::collection::vec(100u64..10_000_000, 0..600),
    ) {
        let w = window(requests, 0, &lat);
        match judge(&w, None, &thresholds()) {
            Verdict::Breach(b) => prop_assert!(false, "breach on {requests} requests: {b:?}"),
            Verdict::NotEnoughTraffic => prop_assert!(requests < 20),
            _ => prop_assert!(requests >= 20),
        }
    }
}
