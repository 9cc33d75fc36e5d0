//! An AWS Application Load Balancer listener as the switch (dry run): one
//! `ModifyListener` whose default action forwards to both target groups,
//! weight 1 on the new side's and 0 on the other's (the same call moves
//! weights for a canary later), then `DescribeListeners` to read it back.
//! The listener update is eventually consistent across the ALB's nodes
//! (seconds): bluegreen confirms it by probing until 3 answers in a row
//! come from the new side.

use super::dry_run::{Plan, Request};
use bluegreen_core::config::router::AlbConfig;
use bluegreen_core::Side;

/// The listener plan.
pub struct Alb(pub AlbConfig);

impl Alb {
    fn target_group(&self, side: Side) -> &str {
        match side {
            Side::Blue => &self.0.blue_target_group,
            Side::Green => &self.0.green_target_group,
        }
    }

    /// An Elastic Load Balancing v2 Query API call, signed with SigV4 at
    /// send time (the signature and the credential are not printed).
    fn call(&self, params: &[(&str, &str)], why: String) -> Request {
        let mut form = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            form.append_pair(k, v);
        }
        form.append_pair("Version", "2015-12-01");
        Request {
            method: "POST",
            url: format!("https://elasticloadbalancing.{}.amazonaws.com/", self.0.region),
            headers: vec![
                (
                    "Content-Type",
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                ),
                ("X-Amz-Date", "<the time of sending, YYYYMMDDTHHMMSSZ>".into()),
                (
                    "Authorization",
                    format!(
                        "AWS4-HMAC-SHA256 Credential=<redacted>/<date>/{}/elasticloadbalancing/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=<redacted>",
                        self.0.region
                    ),
                ),
            ],
            body: Some(form.finish()),
            why,
        }
    }
}

impl Plan for Alb {
    fn name(&self) -> &'static str {
        "alb"
    }

    fn requests(&self, live: Side) -> Vec<Request> {
        const TG: &str = "DefaultActions.member.1.ForwardConfig.TargetGroups.member";
        let (new, old) = (self.target_group(live), self.target_group(live.other()));
        let keys: Vec<String> = (1..=2)
            .flat_map(|i| {
                [
                    format!("{TG}.{i}.TargetGroupArn"),
                    format!("{TG}.{i}.Weight"),
                ]
            })
            .collect();
        let modify = [
            ("Action", "ModifyListener"),
            ("ListenerArn", self.0.listener_arn.as_str()),
            ("DefaultActions.member.1.Type", "forward"),
            (keys[0].as_str(), new),
            (keys[1].as_str(), "1"),
            (keys[2].as_str(), old),
            (keys[3].as_str(), "0"),
            (
                "DefaultActions.member.1.ForwardConfig.TargetGroupStickinessConfig.Enabled",
                "false",
            ),
        ];
        vec![
            self.call(
                &modify,
                format!("the listener's default action forwards to {live}'s target group only (weight 1, the other 0)"),
            ),
            self.call(
                &[
                    ("Action", "DescribeListeners"),
                    ("ListenerArns.member.1", self.0.listener_arn.as_str()),
                ],
                format!("read back: the default action names {live}'s target group with weight 1; then probes until 3 answers in a row come from {live} (the ALB's nodes take the change within seconds)"),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alb() -> Alb {
        Alb(AlbConfig {
            region: "eu-west-1".into(),
            listener_arn: "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/web/50dc6c495c0c9188/f2f7dc8efc522ab2".into(),
            blue_target_group: "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/blue/73e2d6bc24d8a067".into(),
            green_target_group: "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/green/943f017f100becff".into(),
        })
    }

    #[test]
    fn a_switch_is_one_modify_listener_forwarding_to_the_new_side_then_a_read_back() {
        let r = alb().requests(Side::Green);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].method, "POST");
        assert_eq!(
            r[0].url,
            "https://elasticloadbalancing.eu-west-1.amazonaws.com/"
        );
        let form: Vec<(String, String)> =
            form_urlencoded::parse(r[0].body.as_deref().unwrap().as_bytes())
                .into_owned()
                .collect();
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{k} in {form:?}"))
        };
        assert_eq!(get("Action"), "ModifyListener");
        assert_eq!(get("Version"), "2015-12-01");
        assert_eq!(get("ListenerArn"), alb().0.listener_arn);
        assert_eq!(get("DefaultActions.member.1.Type"), "forward");
        let tg = "DefaultActions.member.1.ForwardConfig.TargetGroups.member";
        assert_eq!(
            get(&format!("{tg}.1.TargetGroupArn")),
            alb().0.green_target_group
        );
        assert_eq!(get(&format!("{tg}.1.Weight")), "1");
        assert_eq!(
            get(&format!("{tg}.2.TargetGroupArn")),
            alb().0.blue_target_group
        );
        assert_eq!(get(&format!("{tg}.2.Weight")), "0");
        // The ARN's ':' and '/' are escaped on the wire.
        assert!(r[0].body.as_deref().unwrap().contains(
            "ListenerArn=arn%3Aaws%3Aelasticloadbalancing%3Aeu-west-1%3A123456789012%3Alistener%2Fapp%2Fweb%2F"
        ));
        let back: Vec<(String, String)> =
            form_urlencoded::parse(r[1].body.as_deref().unwrap().as_bytes())
                .into_owned()
                .collect();
        assert!(back.contains(&("Action".into(), "DescribeListeners".into())));
        assert!(back.contains(&("ListenerArns.member.1".into(), alb().0.listener_arn)));
    }

    #[test]
    fn no_credential_is_printed() {
        let text = crate::drivers::dry_run::DryRun(alb()).text(Side::Blue);
        assert!(
            text.contains("Host: elasticloadbalancing.eu-west-1.amazonaws.com\n"),
            "{text}"
        );
        assert!(text.contains("Credential=<redacted>"), "{text}");
        assert!(text.contains("Signature=<redacted>"), "{text}");
    }
}
