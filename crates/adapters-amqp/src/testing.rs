//! Test support: a TCP proxy in front of the broker (or any TCP service) that tests switch
//! between passing traffic, cutting every connection, and blackholing it.
//!
//! ```ignore
//! # async fn example() -> std::io::Result<()> {
//! use adapters_amqp::testing::FaultProxy;
//! let proxy = FaultProxy::start("127.0.0.1:5672".parse().unwrap()).await?;
//! let url = proxy.url_for("amqp://guest:guest@{addr}/%2f"); // give this to the publisher
//! proxy.cut(); // every connection is reset, new ones are closed at once
//! proxy.blackhole(); // connections stay open, nothing goes through: the peer hangs
//! proxy.pass(); // back to normal (connections held open by a blackhole resume)
//! # Ok(()) }
//! ```
//!
//! Dropping the proxy stops it and closes every connection.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Pass,
    /// Resets every open connection (`SO_LINGER` 0, so the client sees a reset) and closes
    /// new ones as soon as they are accepted.
    Cut,
    /// Accepts connections and keeps them open, but forwards nothing either way.
    Blackhole,
}

/// A TCP proxy on `127.0.0.1:<free port>`, run by a tokio task (see the module docs).
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    mode: watch::Sender<Mode>,
    accepting: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `target` in [`Mode::Pass`]. Each accepted connection opens its own
    /// connection to `target` (none if that fails: the client's is closed).
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let (mode, watching) = watch::channel(Mode::Pass);
        let accepting = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    // Out of descriptors, say: do not spin.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                if *watching.borrow() == Mode::Cut {
                    // Refuse: a listening socket cannot refuse, so accept and reset.
                    let _ = client.set_zero_linger();
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, target, watching.clone()));
            }
        });
        Ok(Self { address, mode, accepting })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `template` with `{addr}` replaced by the proxy's address, e.g.
    /// `url_for("amqp://guest:guest@{addr}/%2f")`.
    pub fn url_for(&self, template: &str) -> String {
        template.replace("{addr}", &self.address.to_string())
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Forwards traffic again.
    pub fn pass(&self) {
        self.mode.send_replace(Mode::Pass);
    }

    /// Resets every connection and refuses new ones until the next mode change.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Stops forwarding but keeps (and accepts) connections, until the next mode change.
    pub fn blackhole(&self) {
        self.mode.send_replace(Mode::Blackhole);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping `mode` (the sender) ends every relay (see `pump`).
        self.accepting.abort();
    }
}

/// Carries one client connection to its own connection to `target` until either side
/// closes, the proxy cuts, or the proxy is dropped.
async fn relay(client: TcpStream, target: SocketAddr, mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    // Closing the client's socket then resets it rather than ending it politely.
    let _ = client.set_zero_linger();
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(pump(client_read, server_write, mode.clone()), pump(server_read, client_write, mode));
    // Both halves of both sockets are dropped here: the sockets close.
}

/// Copies one direction. Returns on end of stream (passing it on), an error, a cut, or when
/// the proxy is dropped; while blackholed, reads nothing (so the sender's buffers fill up).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Cut => return,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass => {}
        }
        // A mode change interrupts the read (reads are cancel-safe: nothing is lost).
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let length = match read {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(length) => length,
        };
        // What was read in `Pass` is delivered, unless the proxy cuts meanwhile.
        tokio::select! {
            written = to.write_all(&buffer[..length]) => {
                if written.is_err() {
                    return;
                }
            }
            () = until_cut(&mut mode) => return,
        }
    }
}

/// Returns once the mode is [`Mode::Cut`] or the proxy is dropped.
async fn until_cut(mode: &mut watch::Receiver<Mode>) {
    while *mode.borrow_and_update() != Mode::Cut {
        if mode.changed().await.is_err() {
            return;
        }
    }
}
