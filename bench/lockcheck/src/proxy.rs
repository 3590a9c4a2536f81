//! A TCP proxy between a service replica and Redis that the nemesis
//! controls: it forwards, delays every chunk, holds everything (a
//! blackhole: bytes arrive late when it lifts, as TCP retransmits them after
//! a partition heals), or resets every connection it carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

/// What the proxy does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk waits this long before it goes on.
    Delay(Duration),
    /// Nothing goes on until the mode changes.
    Blackhole,
}

/// One proxy: a port of its own, forwarding to the shared target.
pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    resets: broadcast::Sender<()>,
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:<target>`
    /// (read at each new connection: a failover moves it).
    pub async fn start(target: Arc<AtomicU16>) -> anyhow::Result<Arc<Self>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, _) = watch::channel(Mode::Pass);
        let (resets, _) = broadcast::channel(4);
        let proxy = Arc::new(Self { port, mode, resets });
        let accepting = Arc::clone(&proxy);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = target.load(Ordering::SeqCst);
                let (mode, reset) = (accepting.mode.subscribe(), accepting.resets.subscribe());
                tokio::spawn(carry(client, upstream, mode, reset));
            }
        });
        Ok(proxy)
    }

    /// Sets what happens to the bytes from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Resets every connection it carries now (RST to both ends).
    pub fn reset_all(&self) {
        let _ = self.resets.send(());
    }
}

async fn carry(
    client: TcpStream,
    upstream: u16,
    mode: watch::Receiver<Mode>,
    mut reset: broadcast::Receiver<()>,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // Closing with SO_LINGER 0 sends RST instead of FIN.
    for socket in [&client, &server] {
        let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, mode.clone()) => {}
        _ = pump(server_read, client_write, mode) => {}
        _ = reset.recv() => {}
    }
}

/// Copies one direction, as the mode says, until either end closes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        loop {
            let now = *mode.borrow_and_update();
            match now {
                Mode::Pass => break,
                Mode::Delay(delay) => {
                    tokio::time::sleep(delay).await;
                    break;
                }
                Mode::Blackhole => {
                    if mode.changed().await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        to.write_all(&buffer[..n]).await?;
    }
}
