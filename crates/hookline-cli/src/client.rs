//! The HTTP client: bearer authentication, JSON in and out, and the API's error
//! answers turned into errors carrying its message.

use anyhow::Context as _;
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// A client of one ingest instance.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    /// A client of the API at `base`, sending `token` (if any) as bearer token.
    pub fn new(base: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("hookline-cli/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base = Url::parse(base).with_context(|| format!("--url {base}"))?;
        anyhow::ensure!(!base.cannot_be_a_base(), "--url {base}: not an http(s) URL");
        Ok(Self {
            http,
            base,
            token: token.map(str::to_owned),
        })
    }

    /// The URL of `segments` (each percent-encoded) under the base, with `query`.
    pub fn url(&self, segments: &[&str], query: &[(&str, Option<&str>)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let present: Vec<(&str, &str)> = query
            .iter()
            .filter_map(|(name, value)| value.map(|value| (*name, value)))
            .collect();
        if !present.is_empty() {
            url.query_pairs_mut().extend_pairs(present);
        }
        url
    }

    /// `GET path`.
    pub async fn get(&self, path: Url) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, or none.
    pub async fn post(&self, path: Url, body: Option<Value>) -> anyhow::Result<Value> {
        self.call(Method::POST, path, body).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: Url) -> anyhow::Result<Value> {
        self.call(Method::DELETE, path, None).await
    }

    async fn call(&self, method: Method, url: Url, body: Option<Value>) -> anyhow::Result<Value> {
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            Ok(value)
        } else {
            Err(anyhow::Error::msg(api_error(status, &value)))
        }
    }
}

/// The message of an error answer: `401 unauthorized: <the API's message>`.
pub fn api_error(status: StatusCode, body: &Value) -> String {
    let error = &body["error"];
    match (error["code"].as_str(), error["message"].as_str()) {
        (Some(code), Some(message)) => {
            let field = error["field"]
                .as_str()
                .map(|field| format!(" (field `{field}`)"))
                .unwrap_or_default();
            format!("{} {code}: {message}{field}", status.as_u16())
        }
        _ => format!("{status}: {body}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_error_answer_reads_as_its_status_code_and_message() {
        let body =
            json!({"error": {"code": "invalid_field", "message": "bad since", "field": "since"}});
        assert_eq!(
            api_error(StatusCode::UNPROCESSABLE_ENTITY, &body),
            "422 invalid_field: bad since (field `since`)"
        );
        let plain = api_error(StatusCode::BAD_GATEWAY, &json!("upstream"));
        assert!(plain.starts_with("502"), "{plain}");
    }

    #[test]
    fn urls_encode_their_segments_and_keep_a_base_path() {
        let client = Client::new("http://h:1/api/", None).unwrap();
        let url = client.url(&["v1", "a/b c"], &[("tenant", Some("x y")), ("n", None)]);
        assert_eq!(url.as_str(), "http://h:1/api/v1/a%2Fb%20c?tenant=x+y");
        let client = Client::new("http://h:1", None).unwrap();
        assert_eq!(
            client.url(&["v1", "jobs"], &[]).as_str(),
            "http://h:1/v1/jobs"
        );
        assert!(Client::new("not a url", None).is_err());
    }
}
