//! Copies of a request for the taps: the recording takes the head and a
//! small body as the client sent them; the shadow copy needs the body whole.
//! Only bodies up to the taps' caps are read into memory, and nothing at all
//! when no tap wants this request.

use super::error::ProxyError;
use super::UpstreamBody;
use crate::client_body::ClientBodyError;
use crate::taps::recorder::Recorder;
use crate::taps::shadow::Shadow;
use bluegreen_core::record::Recorded;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::uri::PathAndQuery;
use http_body::Body as _;
use http_body_util::{Either, Full};
use std::sync::Arc;

/// The body to send on, the body read whole (when a tap needed it), and the
/// shadow run that gets a copy of this request.
pub struct Prepared {
    pub body: UpstreamBody,
    pub whole: Option<Bytes>,
    pub shadow: Option<Arc<Shadow>>,
}

/// Reads the body for the taps that want this request, fills in the record,
/// and says whether the shadow gets a copy.
pub async fn prepare_taps(
    parts: &http::request::Parts,
    path: &PathAndQuery,
    body: UpstreamBody,
    recorder: Option<&Recorder>,
    shadow: Option<Arc<Shadow>>,
    record: &mut Option<Recorded>,
) -> Result<Prepared, ProxyError> {
    let shadow = shadow.filter(|s| s.wants(&parts.method, &parts.headers));
    if recorder.is_none() && shadow.is_none() {
        return Ok(Prepared {
            body,
            whole: None,
            shadow: None,
        });
    }
    let cap = recorder
        .map(|r| r.options.max_body)
        .max(shadow.as_ref().map(|s| s.options.max_request_body))
        .unwrap_or(0);
    let (body, whole) = buffer(&parts.headers, body, cap).await?;
    // Recorded as the client sent it, before any rewriting.
    if let Some(r) = recorder {
        *record = Some(capture(parts, path, whole.as_ref(), r));
    }
    let shadow = match shadow {
        Some(s)
            if whole
                .as_ref()
                .is_some_and(|b| b.len() <= s.options.max_request_body) =>
        {
            Some(s)
        }
        Some(s) => {
            s.skip();
            None
        }
        None => None,
    };
    Ok(Prepared {
        body,
        whole,
        shadow,
    })
}

/// Reads a body whole when it fits `cap` (by Content-Length) and forwards it
/// from memory; a larger one, or one of unknown length, streams on and the
/// taps go without it.
async fn buffer(
    headers: &HeaderMap,
    body: UpstreamBody,
    cap: usize,
) -> Result<(UpstreamBody, Option<Bytes>), ProxyError> {
    let body = match body {
        Either::Right(full) if full.is_end_stream() => {
            return Ok((Either::Right(full), Some(Bytes::new())))
        }
        other => other,
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if length.is_none_or(|n| n > cap) {
        return Ok((body, None));
    }
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| {
            ProxyError::ClientBody(
                ClientBodyError::find(&*e).unwrap_or(ClientBodyError::Broken(e.to_string())),
            )
        })?
        .to_bytes();
    Ok((Either::Right(Full::new(bytes.clone())), Some(bytes)))
}

/// Builds the record of a request; a body it does not have, or one over the
/// recording's cap, is marked as left out.
fn capture(
    parts: &http::request::Parts,
    path: &PathAndQuery,
    body: Option<&Bytes>,
    r: &Recorder,
) -> Recorded {
    let headers = crate::taps::header_pairs(&parts.headers);
    let now_ms = crate::taps::shadow::now_ms();
    let kept = body.filter(|b| b.len() <= r.options.max_body);
    let mut rec = Recorded::new(
        now_ms,
        parts.method.as_str(),
        path.as_str(),
        headers,
        kept.map_or(&[][..], |b| b),
        &r.options.redact,
    );
    rec.body_omitted = kept.is_none();
    rec
}
