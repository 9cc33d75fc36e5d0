//! A Kubernetes Service's selector as the switch (dry run): the Service is
//! read for its `resourceVersion`, patched with a JSON merge patch that
//! names the new side in `spec.selector` and carries that version as a
//! precondition (a Service changed in between answers 409 and the switch
//! is refused), then its EndpointSlices are read until every ready
//! endpoint is the new side's. kube-proxy on each node converges on its
//! own: the switch is not atomic across nodes, which is why bluegreen
//! confirms it by probing through the Service before it counts.

use super::dry_run::{Plan, Request};
use bluegreen_core::config::router::KubernetesConfig;
use bluegreen_core::Side;

/// The Service patch plan.
pub struct Kubernetes(pub KubernetesConfig);

impl Plan for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn requests(&self, live: Side) -> Vec<Request> {
        let k = &self.0;
        let service = format!(
            "{}/api/v1/namespaces/{}/services/{}",
            k.api, k.namespace, k.service
        );
        let auth = (
            "Authorization",
            format!("Bearer <redacted: {}>", k.token_file.display()),
        );
        let patch = serde_json::json!({
            "metadata": { "resourceVersion": "<metadata.resourceVersion of request 1>" },
            "spec": { "selector": { (k.label.clone()): live.to_string() } },
        });
        let selector: String = form_urlencoded::byte_serialize(
            format!("kubernetes.io/service-name={}", k.service).as_bytes(),
        )
        .collect();
        vec![
            Request {
                method: "GET",
                url: service.clone(),
                headers: vec![auth.clone(), ("Accept", "application/json".into())],
                body: None,
                why: format!(
                    "the Service as it is: its resourceVersion, and spec.selector.{} (blue or green) must be there",
                    k.label
                ),
            },
            Request {
                method: "PATCH",
                url: service,
                headers: vec![
                    auth.clone(),
                    ("Accept", "application/json".into()),
                    ("Content-Type", "application/merge-patch+json".into()),
                ],
                body: Some(patch.to_string()),
                why: format!(
                    "the selector names {live} (other keys kept); a Service changed since request 1 answers 409 Conflict and the switch is refused"
                ),
            },
            Request {
                method: "GET",
                url: format!(
                    "{}/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector={selector}",
                    k.api, k.namespace
                ),
                headers: vec![auth, ("Accept", "application/json".into())],
                body: None,
                why: format!(
                    "repeated until every ready endpoint is a {live} pod; then probes through the Service until 3 answers in a row come from {live} (kube-proxy converges node by node)"
                ),
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::dry_run::DryRun;

    fn k8s() -> Kubernetes {
        Kubernetes(KubernetesConfig {
            api: "https://kubernetes.default.svc".into(),
            namespace: "shop".into(),
            service: "web".into(),
            label: "slot".into(),
            token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
        })
    }

    #[test]
    fn a_switch_patches_the_selector_with_a_resource_version_precondition() {
        let r = k8s().requests(Side::Green);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].method, "GET");
        assert_eq!(
            r[0].url,
            "https://kubernetes.default.svc/api/v1/namespaces/shop/services/web"
        );
        assert_eq!(r[1].method, "PATCH");
        assert_eq!(r[1].url, r[0].url);
        assert!(r[1]
            .headers
            .contains(&("Content-Type", "application/merge-patch+json".into())));
        let body: serde_json::Value = serde_json::from_str(r[1].body.as_deref().unwrap()).unwrap();
        assert_eq!(body["spec"]["selector"]["slot"], "green");
        assert_eq!(body["spec"]["selector"].as_object().unwrap().len(), 1);
        assert!(body["metadata"]["resourceVersion"].is_string());
        assert_eq!(
            r[2].url,
            "https://kubernetes.default.svc/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb"
        );
        let blue = k8s().requests(Side::Blue);
        assert!(blue[1]
            .body
            .as_deref()
            .unwrap()
            .contains("\"slot\":\"blue\""));
    }

    #[test]
    fn the_printed_plan_is_the_wire_form_without_the_token() {
        let text = DryRun(k8s()).text(Side::Green);
        assert!(text.contains(
            "PATCH /api/v1/namespaces/shop/services/web HTTP/1.1\nHost: kubernetes.default.svc\n"
        ), "{text}");
        assert!(text.contains("Authorization: Bearer <redacted: /var/run/secrets/kubernetes.io/serviceaccount/token>"), "{text}");
        let body = k8s().requests(Side::Green)[1].body.clone().unwrap();
        assert!(
            text.contains(&format!("Content-Length: {}\n\n{body}", body.len())),
            "{text}"
        );
        assert!(
            text.starts_with("--- request 1 of a switch to green\n# the Service as it is"),
            "{text}"
        );
    }
}
