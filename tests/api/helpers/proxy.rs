//! A TCP proxy a test owns between the service and Redis: the address the
//! service knows stays the same while the test moves the server behind it,
//! as a managed Redis moves its primary endpoint on a failover; or the
//! server's answers arrive late, as over a congested network.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Forwards every connection to the current target; switching the target
/// closes the connections it carries (their server is gone in a failover).
pub struct Proxy {
    /// The port the service connects to.
    pub port: u16,
    target: Arc<AtomicU16>,
    /// How long the server's bytes are held before they go on (ms).
    reply_delay_ms: Arc<AtomicU64>,
    /// Bumped on every switch: connections of an older generation close.
    generation: watch::Sender<u64>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port, forwarding to `127.0.0.1:<target>`.
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let target = Arc::new(AtomicU16::new(target));
        let (generation, _) = watch::channel(0u64);
        let reply_delay_ms = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&target),
            Arc::clone(&reply_delay_ms),
            generation.clone(),
        ));
        Self {
            port,
            target,
            reply_delay_ms,
            generation,
            accept,
        }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Holds every byte the server sends for `delay` before passing it on
    /// (zero: at once), except on connections that wait for wake messages
    /// (they sent BLPOP or SUBSCRIBE). Commands still reach the server at once.
    pub fn delay_replies(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.reply_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// New connections go to `127.0.0.1:<target>`; open ones are closed.
    pub fn switch_to(&self, target: u16) {
        self.target.store(target, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.generation.send_modify(|g| *g += 1);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: Arc<AtomicU16>,
    reply_delay_ms: Arc<AtomicU64>,
    generation: watch::Sender<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let port = target.load(Ordering::SeqCst);
        let mut switched = generation.subscribe();
        let delay = Arc::clone(&reply_delay_ms);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(("127.0.0.1", port)).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let waits_for_wake = std::sync::atomic::AtomicBool::new(false);
            let commands = async {
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    let n = client_read.read(&mut buffer).await?;
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    let sent = &buffer[..n];
                    if [&b"BLPOP"[..], b"blpop", b"SUBSCRIBE", b"subscribe"]
                        .iter()
                        .any(|word| sent.windows(word.len()).any(|w| w == *word))
                    {
                        waits_for_wake.store(true, Ordering::SeqCst);
                    }
                    server_write.write_all(sent).await?;
                }
            };
            let replies = async {
                let mut buffer = vec![0u8; 16 * 1024];
                loop {
                    let n = server_read.read(&mut buffer).await?;
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    let held = delay.load(Ordering::SeqCst);
                    if held > 0 && !waits_for_wake.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(held)).await;
                    }
                    client_write.write_all(&buffer[..n]).await?;
                }
            };
            tokio::select! {
                _ = commands => {}
                _ = replies => {}
                _ = switched.changed() => {}
            }
        });
    }
}
