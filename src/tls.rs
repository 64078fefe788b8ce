//! The TURN server's TLS setup (`turns:`): the operator's certificate from `--turn-cert` /
//! `--turn-key` (PEM), else a self-signed one made at start with rcgen (browsers' TURN clients
//! accept it; other clients must be told not to verify).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Where the certificate came from (for the start-up log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    Files,
    SelfSigned,
}

/// Builds the rustls server configuration: the given PEM files, or a fresh self-signed
/// certificate for `names` (DNS names or IP addresses).
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    names: &[String],
) -> anyhow::Result<(Arc<ServerConfig>, CertSource)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth();
    let (chain, key, source) = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading TURN certificate {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("parsing TURN certificate {}", cert.display()))?;
            if chain.is_empty() {
                bail!("TURN certificate {} holds no certificate", cert.display());
            }
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading TURN private key {}", key.display()))?;
            (chain, key, CertSource::Files)
        }
        (None, None) => {
            let made = rcgen::generate_simple_self_signed(names.to_vec())
                .context("making a self-signed TURN certificate")?;
            let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
                .map_err(|e| anyhow::anyhow!("self-signed TURN key: {e}"))?;
            (vec![made.cert.der().clone()], key, CertSource::SelfSigned)
        }
        _ => bail!("--turn-cert and --turn-key go together"),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the TURN certificate and key do not match or are not supported")?;
    config.alpn_protocols = Vec::new();
    Ok((Arc::new(config), source))
}

/// A TCP stream that can leave the runtime it was accepted on. TURN over TLS does its
/// handshake on the main runtime (with a deadline, off the relay threads); then the stream,
/// with the TLS state around it, moves to a TURN worker: [`MovableTcp::detach`] takes it off
/// the main runtime's reactor, [`MovableTcp::attach`] (on the worker) puts it on the worker's.
/// While detached every read and write fails with `NotConnected`.
pub enum MovableTcp {
    Attached(tokio::net::TcpStream),
    Detached(std::net::TcpStream),
    Gone,
}

impl MovableTcp {
    pub fn detach(&mut self) -> std::io::Result<()> {
        match std::mem::replace(self, MovableTcp::Gone) {
            MovableTcp::Attached(s) => *self = MovableTcp::Detached(s.into_std()?),
            other => *self = other,
        }
        Ok(())
    }

    /// Registers the stream with the current runtime (call it there).
    pub fn attach(&mut self) -> std::io::Result<()> {
        match std::mem::replace(self, MovableTcp::Gone) {
            MovableTcp::Detached(s) => {
                *self = MovableTcp::Attached(tokio::net::TcpStream::from_std(s)?)
            }
            other => *self = other,
        }
        Ok(())
    }

    fn attached(&mut self) -> std::io::Result<&mut tokio::net::TcpStream> {
        match self {
            MovableTcp::Attached(s) => Ok(s),
            _ => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl tokio::io::AsyncRead for MovableTcp {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut().attached() {
            Ok(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for MovableTcp {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut().attached() {
            Ok(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut().attached() {
            Ok(s) => std::pin::Pin::new(s).poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut().attached() {
            Ok(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_and_files() {
        let (_, source) = server_config(None, None, &["127.0.0.1".into(), "localhost".into()])
            .expect("self-signed");
        assert_eq!(source, CertSource::SelfSigned);

        let made =
            rcgen::generate_simple_self_signed(vec!["turn.example".to_owned()]).expect("cert");
        let dir = std::env::temp_dir().join(format!("tandem-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem()).expect("write cert");
        std::fs::write(&key, made.signing_key.serialize_pem()).expect("write key");
        let (_, source) = server_config(Some(&cert), Some(&key), &[]).expect("from files");
        assert_eq!(source, CertSource::Files);

        // A key that does not belong to the certificate is refused with a clear message.
        let other = rcgen::generate_simple_self_signed(vec!["x".to_owned()]).expect("cert");
        std::fs::write(&key, other.signing_key.serialize_pem()).expect("write key");
        let err = server_config(Some(&cert), Some(&key), &[]).expect_err("mismatch");
        assert!(format!("{err:#}").contains("do not match"), "{err:#}");
        // Garbage is refused too.
        std::fs::write(&cert, "not a certificate").expect("write");
        assert!(server_config(Some(&cert), Some(&key), &[]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
