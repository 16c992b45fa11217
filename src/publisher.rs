//! `hookline publish`: publish one CloudEvent to a Hookline ingest, as a producer in the cluster
//! would, with the pod's ServiceAccount token. The chart's `helm test` runs it from Hookline's own
//! image, which has no shell or curl.

use std::time::Duration;

use thiserror::Error;

/// The default place of a pod's ServiceAccount token.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Why an event was not published.
#[derive(Debug, Error)]
pub enum PublishError {
    /// `data` was given but is not JSON.
    #[error("--data is not JSON")]
    Data(#[source] serde_json::Error),
    /// The token file could not be read.
    #[error("reading the token file {path}")]
    Token {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No answer came.
    #[error("POST {url}")]
    Request {
        /// Where it went.
        url: String,
        /// Why nothing came back.
        #[source]
        source: reqwest::Error,
    },
    /// Hookline answered, but did not accept the event.
    #[error("refused with {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body (Hookline's JSON error, naming the problem).
        body: String,
    },
}

/// One event to publish, in structured mode.
#[derive(Debug, Clone)]
pub struct Publication {
    /// Base URL of the ingest, e.g. `http://hookline-ingest.hookline.svc:8080`.
    pub ingest_url: String,
    /// The namespace the event is published in.
    pub namespace: String,
    /// CloudEvents `id`, `source`, `type`.
    pub id: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `type`.
    pub event_type: String,
    /// JSON data, if any.
    pub data: Option<String>,
    /// A file holding the bearer token (absent: no `Authorization` header).
    pub token_file: Option<String>,
}

impl Publication {
    /// The CloudEvent as structured-mode JSON.
    fn body(&self) -> Result<serde_json::Value, PublishError> {
        let mut event = serde_json::json!({
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.event_type,
        });
        if let Some(data) = &self.data {
            event["datacontenttype"] = "application/json".into();
            event["data"] = serde_json::from_str(data).map_err(PublishError::Data)?;
        }
        Ok(event)
    }

    fn url(&self) -> String {
        format!("{}/v1/namespaces/{}/events", self.ingest_url.trim_end_matches('/'), self.namespace)
    }
}

/// Publish `p`; on `202` returns Hookline's answer (its JSON body).
pub async fn publish(p: &Publication) -> Result<String, PublishError> {
    // reqwest is built without a default crypto provider (https ingest URLs need one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = p.url();
    let mut request = reqwest::Client::new()
        .post(&url)
        .timeout(Duration::from_secs(30))
        .header("content-type", "application/cloudevents+json")
        .body(p.body()?.to_string());
    if let Some(path) = &p.token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|source| PublishError::Token { path: path.clone(), source })?;
        request = request.bearer_auth(token.trim());
    }
    let answer = request.send().await.map_err(|source| PublishError::Request { url: url.clone(), source })?;
    let status = answer.status().as_u16();
    let body = answer.text().await.map_err(|source| PublishError::Request { url, source })?;
    if status == 202 { Ok(body) } else { Err(PublishError::Refused { status, body }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(data: Option<&str>) -> Publication {
        Publication {
            ingest_url: "http://hookline-ingest:8080/".into(),
            namespace: "shop".into(),
            id: "1".into(),
            source: "/cli".into(),
            event_type: "order.created".into(),
            data: data.map(str::to_string),
            token_file: None,
        }
    }

    #[test]
    fn the_url_names_the_namespace_whatever_the_base_ends_with() {
        assert_eq!(publication(None).url(), "http://hookline-ingest:8080/v1/namespaces/shop/events");
    }

    #[test]
    fn data_is_sent_as_json_and_bad_json_is_an_error() {
        let body = publication(Some(r#"{"n": 1}"#)).body().expect("a body");
        assert_eq!(body["data"]["n"], 1);
        assert_eq!(body["datacontenttype"], "application/json");
        assert!(publication(None).body().expect("a body").get("data").is_none());
        assert!(matches!(publication(Some("{")).body(), Err(PublishError::Data(_))));
    }
}
