//! Writes to a registry through the same client that reads from upstreams: a mirror's
//! destination is pushed to with the token flow (scope `pull,push`), Basic auth, or nothing,
//! as the registry asks.

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::{Challenge, Upstream, UpstreamError};
use crate::store::ByteStream;

/// What a write sends.
pub enum Body {
    Empty,
    /// Small and resendable: a manifest.
    Bytes(Bytes),
    /// A blob streamed once; it cannot be resent after a challenge, so the write that
    /// precedes it (the upload's POST) is what takes the token.
    Stream(ByteStream, Option<u64>),
}

impl Upstream {
    /// Sends a write for repository `name` to `url` (absolute, or a path on the registry),
    /// following an auth challenge once when the body can be resent.
    pub async fn write(
        &self,
        method: Method,
        name: &str,
        url: &str,
        content_type: Option<&str>,
        body: Body,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_owned()
        } else {
            format!("{}{url}", self.url)
        };
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| self.unreachable(e))?;
        let scope = format!("repository:{name}:pull,push");
        let basic = self.basic_auth();
        let build = |auth: Option<&str>| {
            let mut r = self.http.request(method.clone(), &url);
            if let Some(t) = content_type {
                r = r.header(CONTENT_TYPE, t);
            }
            if let Some(a) = auth {
                r = r.header(AUTHORIZATION, a);
            }
            r
        };
        // A token for this scope if we hold one; else our credentials, which a Basic registry
        // takes and a token registry answers with its challenge.
        let first = self
            .cached_token(&scope)
            .map(|t| format!("Bearer {t}"))
            .or(basic.clone());
        let (resendable, once) = match body {
            Body::Empty => (Some(Bytes::new()), None),
            Body::Bytes(b) => (Some(b), None),
            Body::Stream(s, len) => (None, Some((s, len))),
        };
        let attach = |r: reqwest::RequestBuilder, once: Option<(ByteStream, Option<u64>)>| match (
            &resendable,
            once,
        ) {
            (Some(b), _) => r.body(b.clone()),
            (None, Some((s, len))) => {
                let r = match len {
                    Some(n) => r.header(CONTENT_LENGTH, n),
                    None => r,
                };
                r.body(reqwest::Body::wrap_stream(s))
            }
            (None, None) => r,
        };
        let resp = attach(build(first.as_deref()), once)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if resp.status() != StatusCode::UNAUTHORIZED || resendable.is_none() {
            return Ok(resp);
        }
        let Some(challenge) = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(Challenge::parse)
        else {
            return Ok(resp);
        };
        let auth = if challenge.bearer {
            Some(format!(
                "Bearer {}",
                self.fetch_token(&challenge, &scope).await?
            ))
        } else {
            basic
        };
        match auth {
            Some(a) if Some(&a) != first.as_ref() => attach(build(Some(&a)), None)
                .send()
                .await
                .map_err(|e| self.unreachable(e)),
            _ => Ok(resp),
        }
    }
}
