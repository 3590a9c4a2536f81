//! A minimal HTTP/1.1 client on hyper: one connection per worker, reused
//! (keep-alive) or opened afresh for every request (a cold function).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::load::Failure;

/// An HTTP/1.1 connection to one address.
pub struct HttpConnection {
    addr: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl HttpConnection {
    /// Not connected yet; the first request connects.
    pub fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            sender: None,
        }
    }

    /// Connected already, as a warm function's agent is (a failed connect is retried on first use).
    pub async fn warm(addr: &str) -> Self {
        let mut connection = Self::new(addr);
        connection.sender = connection.connect().await.ok();
        connection
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(connection);
        Ok(sender)
    }

    /// Sends `request`, reading the whole body. `keep_alive` false closes the connection after.
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
        keep_alive: bool,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let mut sender = match self.sender.take() {
            Some(sender) if keep_alive && !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        sender.ready().await.map_err(|_| Failure::Connect)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| Failure::Other)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| Failure::Other)?
            .to_bytes();
        if keep_alive {
            self.sender = Some(sender);
        }
        Ok((status, body))
    }
}

/// 200 is a success; any other status, its failure kind.
pub fn expect_ok(status: StatusCode) -> Result<(), Failure> {
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(status_failure(status))
    }
}

/// Maps an unexpected status to its failure kind.
pub fn status_failure(status: StatusCode) -> Failure {
    if status.is_server_error() {
        Failure::Http5xx
    } else {
        Failure::HttpOther
    }
}
