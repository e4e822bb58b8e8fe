//! Serves an axum `Router` over plain HTTP or HTTPS on 127.0.0.1, with an on/off switch that really closes the port.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How a simulated server talks to its clients.
#[derive(Clone)]
pub enum Transport {
    /// Plain HTTP (`http://`).
    Plain,
    /// HTTPS with this server configuration (`https://`).
    Tls(Arc<rustls::ServerConfig>),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Tls(_) => f.write_str("Tls"),
        }
    }
}

/// A running server bound to a fixed local address; stops (and drops every connection) on drop.
///
/// Invariant: `addr` stays the same for the server's life, also across `set_down(true)` /
/// `set_down(false)`, so clients configured with the URL keep working after it comes back.
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    scheme: &'static str,
    down: watch::Sender<bool>,
    cancel: CancellationToken,
}

impl Server {
    /// Binds `127.0.0.1:0` and starts serving `router`; requires a Tokio runtime.
    pub(crate) async fn start(router: Router, transport: Transport) -> io::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (down, down_rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let (scheme, acceptor) = match transport {
            Transport::Plain => ("http", None),
            Transport::Tls(config) => ("https", Some(TlsAcceptor::from(config))),
        };
        tokio::spawn(accept_loop(
            listener,
            addr,
            router,
            acceptor,
            down_rx,
            cancel.clone(),
        ));
        Ok(Server {
            addr,
            scheme,
            down,
            cancel,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`, without a trailing slash.
    pub(crate) fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Down: the port is closed (connections are refused) and open connections are dropped.
    pub(crate) fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    acceptor: Option<TlsAcceptor>,
    mut down: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut listener = Some(listener);
    // One token per "up" period: going down cancels it, which drops that period's connections.
    let mut generation = cancel.child_token();
    loop {
        let Some(bound) = listener.as_ref() else {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = down.changed() => {
                    if changed.is_err() { return; }
                    if !*down.borrow_and_update() {
                        match rebind(addr) {
                            Ok(l) => listener = Some(l),
                            Err(error) => {
                                tracing::error!(%addr, %error, "simulated server cannot re-bind its port");
                                return;
                            }
                        }
                        generation = cancel.child_token();
                    }
                }
            }
            continue;
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = down.changed() => {
                if changed.is_err() { return; }
                if *down.borrow_and_update() {
                    listener = None;
                    generation.cancel();
                }
            }
            accepted = bound.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, router.clone(), acceptor.clone(), generation.clone()));
                }
                Err(error) => tracing::debug!(%error, "accept failed"),
            }
        }
    }
}

fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    acceptor: Option<TlsAcceptor>,
    cancel: CancellationToken,
) {
    let service = TowerToHyperService::new(router);
    let builder = Builder::new(TokioExecutor::new());
    // The handshake is inside the per-connection task so that a stalled client never
    // holds up the accept loop.
    let served = async {
        match acceptor {
            None => {
                builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
            }
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => builder.serve_connection(TokioIo::new(tls), service).await,
                Err(error) => Err(error.into()),
            },
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        result = served => if let Err(error) = result {
            tracing::debug!(%error, "simulated server connection ended with an error");
        }
    }
}
