//! Whom the HTTPS client trusts, and what a TLS failure is called.
//!
//! The system's store by default (the bundle `update-ca-certificates` maintains), so that a private
//! CA or a TLS-inspecting proxy's CA installed there is trusted, and the roots follow the system's
//! updates instead of the module's build. `ca_file` adds a PEM bundle of the operator's. Only a
//! system without any store falls back to the Mozilla roots compiled into the module, with a
//! warning: a minimal container without `ca-certificates` still reaches apiban.org.
//!
//! Files are read when the refresher builds its client (after the fork, no thread involved);
//! `ca_file` is also read once in mod_init (config.rs), so that a bad file stops the start.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{CertificateError, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The system's bundle, first found wins: Debian and Ubuntu (`update-ca-certificates`), Fedora
/// and RHEL, openSUSE, Alpine and the BSDs.
pub const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem"];

/// Reads a PEM bundle: every `CERTIFICATE` section, each checked to be usable as a trust anchor.
/// Other sections (keys, CRLs) are ignored. An error says what is wrong, naming the file.
pub fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {shown}: {}", pem_error(&e)))?;
    let mut certs = Vec::new();
    for item in iter {
        let cert = item.map_err(|e| format!("{shown}: not a PEM bundle: {}", pem_error(&e)))?;
        // The same check RootCertStore::add makes, done here so that its error names the entry.
        RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("{shown}: certificate {} is not usable as a CA: {e}", certs.len() + 1))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(format!("{shown} holds no certificate (no '-----BEGIN CERTIFICATE-----' section)"));
    }
    Ok(certs)
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

/// The system's bundle: `$SSL_CERT_FILE` when set (as OpenSSL and curl read it), else the first
/// of SYSTEM_BUNDLES that exists.
pub fn system_bundle(ssl_cert_file: Option<PathBuf>, exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if let Some(p) = ssl_cert_file.filter(|p| !p.as_os_str().is_empty()) {
        return Some(p);
    }
    SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|p| exists(p))
}

/// What the client trusts, and a line saying so for the log.
pub struct Trust {
    pub store: RootCertStore,
    pub summary: String,
    /// Set when the system store was not usable: to be logged as a warning.
    pub warning: Option<String>,
}

/// The system store (or the built-in roots when there is none) plus `ca_file`.
pub fn load(system: Option<&Path>, ca_file: Option<&Path>) -> Trust {
    let mut store = RootCertStore::empty();
    let mut parts = Vec::new();
    let mut warning = None;
    match system.map(|p| (p, read_bundle(p))) {
        Some((p, Ok(certs))) => {
            let (n, _) = store.add_parsable_certificates(certs);
            parts.push(format!("{n} certificate(s) of the system store {}", p.display()));
        }
        other => {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            parts.push(format!("the {} Mozilla roots built into the module", store.len()));
            let why = match other {
                Some((_, Err(e))) => e,
                _ => format!("none of {} exists", SYSTEM_BUNDLES.join(", ")),
            };
            warning = Some(format!(
                "no usable system trust store ({why}): trusting the Mozilla roots built into the module instead; install ca-certificates"
            ));
        }
    }
    if let Some(p) = ca_file {
        // Checked at start; a file changed since then is reported, and the rest still trusted.
        match read_bundle(p) {
            Ok(certs) => {
                let (n, _) = store.add_parsable_certificates(certs);
                parts.push(format!("{n} of ca_file {}", p.display()));
            }
            Err(e) => warning = Some(format!("ca_file: {e}; not trusted")),
        }
    }
    Trust { store, summary: format!("TLS trusts {}", parts.join(" and ")), warning }
}

/// The client configuration ureq uses: ring, TLS 1.2 and 1.3, as ureq's own default.
pub fn client_config(store: RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(store)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS failure in the operator's words: which check failed and what to do. Never holds a URL
/// (with API v1 the key is in it): only the error's kind.
pub fn describe(e: &rustls::Error) -> String {
    use rustls::Error as E;
    let what = match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "unknown issuer: the server's certificate is not signed by a CA of the system store or ca_file".into()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "name mismatch: the server's certificate is not for the host of url".into()
            }
            CertificateError::ExpiredContext { time, not_after } => format!(
                "certificate expired ({} s ago; is the clock right?)",
                time.as_secs().saturating_sub(not_after.as_secs())
            ),
            CertificateError::Expired => "certificate expired".into(),
            CertificateError::NotValidYetContext { .. } | CertificateError::NotValidYet => {
                "certificate not valid yet (is the clock right?)".into()
            }
            CertificateError::Revoked => "certificate revoked".into(),
            CertificateError::BadSignature
            | CertificateError::UnsupportedSignatureAlgorithmContext { .. }
            | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                "bad or unsupported signature on the server's certificate".into()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the server's certificate is not for TLS servers".into()
            }
            CertificateError::BadEncoding => "the server's certificate is malformed".into(),
            other => format!("certificate refused ({other:?})"),
        },
        E::AlertReceived(a) => format!("the server refused the handshake (alert {a:?})"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            "the server does not speak TLS (an http:// server on an https:// url?)".into()
        }
        E::PeerIncompatible(p) => format!("no protocol version or cipher in common ({p:?})"),
        E::NoCertificatesPresented => "the server presented no certificate".into(),
        other => format!("{other}"),
    };
    format!("TLS: {what}")
}

/// Test certificates, made with openssl and valid for 100 years: a CA, and a server certificate
/// it signed for IP 127.0.0.1 only (EC P-256), with that server's key. For unit tests only.
#[cfg(test)]
pub mod fixtures {
    pub const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlDCCATmgAwIBAgIUcQioOqanMRr5rXTrYAdfQg9/bwYwCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTYXBpYmFuIHVuaXQgdGVzdCBDQTAgFw0yNjEyMDQxMDI2NTBa
GA8yMTI2MTExMDEwMjY1MFowHjEcMBoGA1UEAwwTYXBpYmFuIHVuaXQgdGVzdCBD
QTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABHtlOEqOsmAQ4iWuMUkwLjTlfXbd
ELC5q9Chl8+vC6a8f7CA0KqT4lLPGmvmIDpq32FIAl0YawpCIDUDOy2r6mmjUzBR
MB0GA1UdDgQWBBSl8Mgql6m2/oBskxYYR8MhYCjB1jAfBgNVHSMEGDAWgBSl8Mgq
l6m2/oBskxYYR8MhYCjB1jAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kA
MEYCIQDqEM4MdRZ6SO2d1FHdjyDLhQMrWReK0YjQun9iy2bxMAIhAIsGHHLWS1tc
y3KvX6cK0Ce5/uYIFrOxtmgWmcvvxniN
-----END CERTIFICATE-----
";
    pub const SERVER_127_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBqTCCAU+gAwIBAgIUfET+KAv89xH5qBW928UlltHNpV0wCgYIKoZIzj0EAwIw
HjEcMBoGA1UEAwwTYXBpYmFuIHVuaXQgdGVzdCBDQTAgFw0yNjEyMDQxMDI2NTBa
GA8yMTI2MTExMDEwMjY1MFowFDESMBAGA1UEAwwJMTI3LjAuMC4xMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEa+j9wvUnODAs1bjJzl391DZRJaiLCXaqCYdT08x2
Va1uXJWOc60jIaqY1PhtN1DAQyGgMcPO+vbdnHq1JFdhuqNzMHEwDwYDVR0RBAgw
BocEfwAAATAJBgNVHRMEAjAAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMB0GA1UdDgQW
BBSmDX8uKkfSpRHdcj/Mte1T1j4Z9DAfBgNVHSMEGDAWgBSl8Mgql6m2/oBskxYY
R8MhYCjB1jAKBggqhkjOPQQDAgNIADBFAiA/Eum3spVmgw8q2g9rj1F9kd30P0VX
xT2DPogDfcKnUgIhANQgJk8bGLG4UD2VnivsziNelDlzAwxftCv1GklZGSP/
-----END CERTIFICATE-----
";
    pub const SERVER_127_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg9s9CJsjL0LomfMDX
KBSZ+FJi7jNBx3PwB2lByO/1NKuhRANCAARr6P3C9Sc4MCzVuMnOXf3UNlElqIsJ
dqoJh1PTzHZVrW5clY5zrSMhqpjU+G03UMBDIaAxw8769t2cerUkV2G6
-----END PRIVATE KEY-----
";
}

#[cfg(test)]
mod tests {
    use super::fixtures::CA_PEM;
    use super::*;
    use rustls::pki_types::UnixTime;
    use std::time::Duration;

    fn tmp(name: &str, text: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("apiban-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bundles_are_read_and_refused_with_a_reason() {
        let key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let p = tmp("good.pem", format!("# two CAs and a key\n{CA_PEM}{key}{CA_PEM}").as_bytes());
        assert_eq!(read_bundle(&p).unwrap().len(), 2);
        let e = read_bundle(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.contains("cannot read /nonexistent/ca.pem") && e.contains("No such file"), "{e}");
        let p = tmp("empty.pem", b"just text\n");
        assert!(read_bundle(&p).unwrap_err().contains("holds no certificate"));
        let p = tmp("key.pem", key.as_bytes());
        assert!(read_bundle(&p).unwrap_err().contains("holds no certificate"));
        let p = tmp("cut.pem", &CA_PEM.as_bytes()[..200]);
        assert!(read_bundle(&p).unwrap_err().contains("not a PEM bundle"));
        let p = tmp("junk.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(read_bundle(&p).unwrap_err().contains("certificate 1 is not usable as a CA"));
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }

    #[test]
    fn the_system_store_reads_as_a_bundle() {
        // The machine's own store, when it has one: what the module trusts by default.
        if let Some(p) = system_bundle(None, |p| p.exists()) {
            let n = read_bundle(&p).unwrap().len();
            assert!(n > 10, "{}: {n} certificates", p.display());
        }
    }

    #[test]
    fn ssl_cert_file_wins_then_the_first_bundle_found() {
        let env = Some(PathBuf::from("/srv/ca.pem"));
        assert_eq!(system_bundle(env, |_| false), Some(PathBuf::from("/srv/ca.pem")));
        assert_eq!(system_bundle(Some(PathBuf::new()), |_| false), None);
        let found = system_bundle(None, |p| p.starts_with("/etc/pki") || p == Path::new("/etc/ssl/cert.pem"));
        assert_eq!(found, Some(PathBuf::from("/etc/pki/tls/certs/ca-bundle.crt")));
    }

    #[test]
    fn without_a_system_store_the_built_in_roots_are_trusted_with_a_warning() {
        let t = load(None, None);
        assert!(t.store.len() > 100 && t.summary.contains("Mozilla roots"), "{}", t.summary);
        assert!(t.warning.unwrap().contains("install ca-certificates"));
        let t = load(Some(Path::new("/nonexistent/bundle.crt")), None);
        assert!(t.warning.unwrap().contains("/nonexistent/bundle.crt"));
    }

    #[test]
    fn tls_errors_say_which_check_failed() {
        let cert = |c| describe(&rustls::Error::InvalidCertificate(c));
        assert!(cert(CertificateError::UnknownIssuer).starts_with("TLS: unknown issuer"));
        assert!(cert(CertificateError::NotValidForName).starts_with("TLS: name mismatch"));
        let t = UnixTime::since_unix_epoch(Duration::from_secs(1_700_086_400));
        let not_after = UnixTime::since_unix_epoch(Duration::from_secs(1_700_000_000));
        let e = cert(CertificateError::ExpiredContext { time: t, not_after });
        assert_eq!(e, "TLS: certificate expired (86400 s ago; is the clock right?)");
        assert!(cert(CertificateError::NotValidYet).contains("not valid yet"));
        assert!(describe(&rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure)).contains("HandshakeFailure"));
    }
}
