//! The CLI's side of the daemon's API: HTTP/1.1 over its unix socket.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the enforcer daemon at {}: {source}\n  hint: is `enforcer daemon` running? (--socket or \
             ENFORCER_SOCKET name another socket)", socket.display())]
    Connect { socket: PathBuf, source: std::io::Error },
    #[error("the daemon's connection failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the daemon's answer is not JSON ({status}): {text}")]
    NotJson { status: StatusCode, text: String },
    #[error("{0}")]
    Request(#[from] hyper::http::Error),
    #[error(
        "the daemon's answer to {path} is not what this CLI reads ({source}): is the daemon of another version?\n  \
         hint: `enforcer status --json` shows the raw answer"
    )]
    Unexpected { path: String, source: serde_json::Error },
}

/// `answer` (to `path`) read as `T`.
pub fn read<T: serde::de::DeserializeOwned>(path: &str, answer: serde_json::Value) -> Result<T, ClientError> {
    serde_json::from_value(answer).map_err(|source| ClientError::Unexpected { path: path.to_owned(), source })
}

pub struct Client {
    socket: PathBuf,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    #[must_use]
    pub fn new(socket: &Path) -> Self {
        Self { socket: socket.to_owned() }
    }

    /// The daemon's socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn connect(&self) -> Result<Sender, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect { socket: self.socket.clone(), source })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender)
    }

    fn build(
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        Ok(Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "enforcer")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?)
    }

    /// One request; the answer's status and JSON body.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), ClientError> {
        let mut sender = self.connect().await?;
        let response = sender.send_request(Self::build(method, path, body)?).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = serde_json::from_slice(&bytes)
            .map_err(|_| ClientError::NotJson { status, text: String::from_utf8_lossy(&bytes).into_owned() })?;
        Ok((status, value))
    }

    /// Follows a streamed answer, handing each chunk to `out` until the
    /// daemon ends it; returns the status.
    pub async fn follow(&self, path: &str, mut out: impl FnMut(&[u8])) -> Result<StatusCode, ClientError> {
        let mut sender = self.connect().await?;
        let mut response = sender.send_request(Self::build(Method::GET, path, None)?).await?;
        let status = response.status();
        while let Some(frame) = response.body_mut().frame().await {
            if let Ok(data) = frame?.into_data() {
                out(&data);
            }
        }
        Ok(status)
    }
}
