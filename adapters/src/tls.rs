//! Client TLS over any async stream, with a `native_tls::TlsConnector` built once and reused.
//!
//! Why this exists: async-native-tls 0.6 only exposes a connector *builder*; every `connect` builds a
//! fresh `native_tls::TlsConnector`, and on OpenSSL that build loads the system trust bundle: 41 ms
//! (median, docs/BENCHMARKS.md section 5) added to every reconnect, most of the reconnect overhead.
//! Its wrapper around an already built connector is crate-private, so keel does the (small) async
//! glue itself: [`TlsConnector`] holds the built connector (cheap to share: OpenSSL reference-counts
//! its context) and [`TlsConnector::connect`] only runs the handshake.
//!
//! How: native-tls speaks blocking `std::io::Read + Write`. `AllowStd` wraps the async stream,
//! keeps the waker of the task currently polling, and turns the stream's `Pending` into
//! `ErrorKind::WouldBlock`; OpenSSL then returns "want read/write" (a `MidHandshakeTlsStream` during
//! the handshake), which becomes `Pending` again here, and the stream has already registered the
//! waker that resumes us. Certificates and host names are always verified: this module never turns
//! verification off (no `danger_*` call exists in keel).

use smol::io::{AsyncRead, AsyncWrite};
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A built TLS client configuration (trust roots, minimum version), shared by every connection.
#[derive(Clone)]
pub struct TlsConnector {
    inner: native_tls::TlsConnector,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConnector")
    }
}

impl From<native_tls::TlsConnector> for TlsConnector {
    fn from(inner: native_tls::TlsConnector) -> TlsConnector {
        TlsConnector { inner }
    }
}

impl TlsConnector {
    /// Builds the connector from `builder` (the expensive step: do it once per run).
    pub fn build(builder: &native_tls::TlsConnectorBuilder) -> Result<TlsConnector, native_tls::Error> {
        Ok(TlsConnector { inner: builder.build()? })
    }

    /// Runs the TLS handshake for `domain` (SNI and the name the certificate must carry) over
    /// `stream`, without blocking the executor.
    pub async fn connect<S>(&self, domain: &str, stream: S) -> Result<TlsStream<S>, native_tls::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        enum Handshake<S> {
            Start(S),
            Mid(native_tls::MidHandshakeTlsStream<AllowStd<S>>),
            Finished,
        }
        let mut state = Handshake::Start(stream);
        std::future::poll_fn(|cx| {
            let step = match std::mem::replace(&mut state, Handshake::Finished) {
                Handshake::Start(s) => self.inner.connect(domain, AllowStd { inner: s, waker: cx.waker().clone() }),
                Handshake::Mid(mut mid) => {
                    mid.get_mut().set_waker(cx.waker());
                    mid.handshake()
                }
                // `.await` never polls a finished future again.
                Handshake::Finished => return Poll::Pending,
            };
            match step {
                Ok(inner) => Poll::Ready(Ok(TlsStream { inner, shutdown_sent: false })),
                Err(native_tls::HandshakeError::WouldBlock(mid)) => {
                    state = Handshake::Mid(mid);
                    Poll::Pending
                }
                Err(native_tls::HandshakeError::Failure(e)) => Poll::Ready(Err(e)),
            }
        })
        .await
    }
}

/// An async stream seen as a blocking `std::io` one: `Pending` becomes `WouldBlock`, after the
/// stream registered the waker of the task polling us (set before every call into native-tls).
#[derive(Debug)]
struct AllowStd<S> {
    inner: S,
    waker: Waker,
}

impl<S: Unpin> AllowStd<S> {
    fn set_waker(&mut self, waker: &Waker) {
        if !self.waker.will_wake(waker) {
            self.waker = waker.clone();
        }
    }

    fn poll_io<R>(&mut self, f: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<R>>) -> io::Result<R> {
        let mut cx = Context::from_waker(&self.waker);
        match f(Pin::new(&mut self.inner), &mut cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<S: AsyncRead + Unpin> Read for AllowStd<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.poll_io(|s, cx| s.poll_read(cx, buf))
    }
}

impl<S: AsyncWrite + Unpin> Write for AllowStd<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.poll_io(|s, cx| s.poll_write(cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.poll_io(|s, cx| s.poll_flush(cx))
    }
}

/// `WouldBlock` back to `Pending` (the waker is already registered with the stream).
fn pending_on_would_block<T>(r: io::Result<T>) -> Poll<io::Result<T>> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

/// An established TLS connection over `S` (futures-io `AsyncRead` + `AsyncWrite`).
#[derive(Debug)]
pub struct TlsStream<S> {
    inner: native_tls::TlsStream<AllowStd<S>>,
    /// close_notify went out: `poll_close` only has the underlying stream left to close.
    shutdown_sent: bool,
}

impl<S> TlsStream<S> {
    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner.get_ref().inner
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    fn with_waker<R>(&mut self, cx: &Context<'_>, f: impl FnOnce(&mut native_tls::TlsStream<AllowStd<S>>) -> R) -> R {
        self.inner.get_mut().set_waker(cx.waker());
        f(&mut self.inner)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        pending_on_would_block(self.get_mut().with_waker(cx, |s| s.read(buf)))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        pending_on_would_block(self.get_mut().with_waker(cx, |s| s.write(buf)))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        pending_on_would_block(self.get_mut().with_waker(cx, |s| s.flush()))
    }

    /// Sends TLS close_notify (once), then closes the underlying stream.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shutdown_sent {
            match pending_on_would_block(this.with_waker(cx, |s| s.shutdown())) {
                Poll::Ready(Ok(())) => this.shutdown_sent = true,
                other => return other,
            }
        }
        Pin::new(&mut this.inner.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    use smol::net::{TcpListener, TcpStream};

    /// A CA's PEM and an acceptor whose `localhost` leaf it signed.
    fn ca_and_acceptor() -> (String, async_native_tls::TlsAcceptor) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: a leaf named like its issuer would look self-signed to OpenSSL.
        ca_params.distinguished_name.push(DnType::CommonName, "keel tls test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let identity =
            native_tls::Identity::from_pkcs8(leaf.pem().as_bytes(), leaf_key.serialize_pem().as_bytes()).unwrap();
        (ca_pem, native_tls::TlsAcceptor::new(identity).unwrap().into())
    }

    fn connector(ca_pem: &str) -> TlsConnector {
        let mut b = native_tls::TlsConnector::builder();
        b.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
        b.add_root_certificate(native_tls::Certificate::from_pem(ca_pem.as_bytes()).unwrap());
        TlsConnector::build(&b).unwrap()
    }

    /// A stream that answers every other read and write with `Pending` (waking at once) and moves at
    /// most 1000 bytes per call: every WouldBlock and partial-IO path of the adapter runs, at any
    /// socket buffer size. Counts the `Pending`s it gave.
    struct Choppy<S> {
        inner: S,
        stall: bool,
        pendings: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl<S> Choppy<S> {
        fn stall(&mut self, cx: &Context<'_>) -> bool {
            self.stall = !self.stall;
            if self.stall {
                self.pendings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                cx.waker().wake_by_ref();
            }
            self.stall
        }
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Choppy<S> {
        fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.stall(cx) {
                return Poll::Pending;
            }
            let n = buf.len().min(1000);
            Pin::new(&mut this.inner).poll_read(cx, &mut buf[..n])
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Choppy<S> {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if this.stall(cx) {
                return Poll::Pending;
            }
            Pin::new(&mut this.inner).poll_write(cx, &buf[..buf.len().min(1000)])
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_close(cx)
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    const BIG: usize = 4 << 20;

    /// Server: accepts one TLS client, writes BIG bytes while reading BIG bytes, then expects a
    /// clean close (close_notify, then EOF) and returns what it read.
    async fn echo_server(listener: TcpListener, acceptor: async_native_tls::TlsAcceptor) -> Vec<u8> {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let (mut r, mut w) = smol::io::split(tls);
        let write = async {
            w.write_all(&pattern(BIG, 1)).await.unwrap();
            w.flush().await.unwrap();
        };
        let read = async {
            let mut got = vec![0; BIG];
            r.read_exact(&mut got).await.unwrap();
            // After the client's close: close_notify then EOF, no stray bytes.
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "{} bytes after the payload", rest.len());
            got
        };
        let ((), got) = futures_util::future::join(write, read).await;
        got
    }

    #[test]
    fn handshake_then_large_payloads_both_ways_then_close() {
        smol::block_on(async {
            let (ca, acceptor) = ca_and_acceptor();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = smol::spawn(echo_server(listener, acceptor));
            let pendings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let tcp =
                Choppy { inner: TcpStream::connect(addr).await.unwrap(), stall: false, pendings: pendings.clone() };
            let tls = connector(&ca).connect("localhost", tcp).await.unwrap();
            let in_handshake = pendings.load(std::sync::atomic::Ordering::Relaxed);
            assert!(in_handshake >= 4, "the handshake met only {in_handshake} Pending");
            assert_eq!(tls.get_ref().inner.peer_addr().unwrap(), addr);
            let (mut r, mut w) = smol::io::split(tls);
            let write = async {
                w.write_all(&pattern(BIG, 2)).await.unwrap();
                w.flush().await.unwrap();
            };
            let read = async {
                let mut got = vec![0; BIG];
                r.read_exact(&mut got).await.unwrap();
                got
            };
            let ((), got) = futures_util::future::join(write, read).await;
            assert!(got == pattern(BIG, 1), "client read corrupted data");
            w.close().await.unwrap();
            assert!(server.await == pattern(BIG, 2), "server read corrupted data");
            // 8 MB in at most 1000 bytes per call, every other call Pending.
            let total = pendings.load(std::sync::atomic::Ordering::Relaxed);
            assert!(total > 8_000, "only {total} Pending for 8 MB");
        });
    }

    #[test]
    fn one_connector_serves_many_connections() {
        smol::block_on(async {
            let (ca, acceptor) = ca_and_acceptor();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = smol::spawn(async move {
                for i in 0..3u8 {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    tls.write_all(&[i]).await.unwrap();
                    tls.flush().await.unwrap();
                }
            });
            let connector = connector(&ca);
            for i in 0..3u8 {
                let mut tls = connector.connect("localhost", TcpStream::connect(addr).await.unwrap()).await.unwrap();
                let mut b = [0u8; 1];
                tls.read_exact(&mut b).await.unwrap();
                assert_eq!(b[0], i);
            }
            server.await;
        });
    }

    /// The handshake error of a client trusting `ca` that asks `acceptor` for `domain`, as text.
    fn handshake_error(ca: &str, acceptor: async_native_tls::TlsAcceptor, domain: &str) -> String {
        smol::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let server = smol::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let _ = acceptor.accept(tcp).await;
            });
            let e = connector(ca).connect(domain, TcpStream::connect(addr).await.unwrap()).await.unwrap_err();
            server.await;
            crate::stream::transport::chain(&e)
        })
    }

    #[test]
    fn a_certificate_from_another_ca_is_rejected() {
        let (_, acceptor) = ca_and_acceptor();
        let (other_ca, _) = ca_and_acceptor();
        let e = handshake_error(&other_ca, acceptor, "localhost");
        assert!(e.contains("certificate verify failed"), "{e}");
    }

    #[test]
    fn a_certificate_for_another_name_is_rejected() {
        // The right CA, but the leaf is for localhost: host names are always checked.
        let (ca, acceptor) = ca_and_acceptor();
        let e = handshake_error(&ca, acceptor, "example.com");
        assert!(e.contains("certificate verify failed") && e.contains("hostname mismatch"), "{e}");
    }
}
