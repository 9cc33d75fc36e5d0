//! The cluster: forgetting a lost node.

use super::*;

/// `POST /api/v1/cluster/forget {"node": NAME}`: a LOST node is no longer
/// listed (refused for a node that reports).
pub(super) async fn cluster_forget(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: serde_json::Value = parse_body(&body)?;
    let Some(node) = body["node"].as_str() else {
        return Err(ApiError::bad_request(
            "field \"node\": the name of a LOST node",
        ));
    };
    state.router.forget_node(node).await?;
    Ok(Json(serde_json::json!({ "forgotten": node })).into_response())
}
