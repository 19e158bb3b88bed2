//! `--web-config FILE`: TLS, basic authentication and response headers for the monitor's
//! endpoint, in the format of Prometheus' exporter-toolkit (the file node_exporter takes with
//! `--web.config.file`), so that one file and one habit serve every exporter of a node.
//!
//! - `tls_server_config`: `cert_file`, `key_file` (PEM), `client_auth_type` (`NoClientCert`,
//!   `RequireAnyClientCert` and `RequireAndVerifyClientCert` require a certificate signed by
//!   `client_ca_file`; `VerifyClientCertIfGiven` checks one when given), `min_version` and
//!   `max_version` (`TLS12`, `TLS13`). With TLS, plain HTTP is answered 400 and closed.
//! - `basic_auth_users`: user names and bcrypt hashes (as `htpasswd -nbB` writes them). With
//!   users, every path (`/metrics`, `/ready`, `/healthz`) needs one of them: 401 otherwise. A
//!   password is checked by bcrypt once; after that a SHA-256 of it and the hash is kept per
//!   user and compared in constant time, so a scrape does not pay bcrypt every time. An unknown
//!   user costs a bcrypt check too, so timing does not tell which users exist.
//! - `http_server_config.headers`: headers added to every response.
//!
//! Keys tracer does not implement (`cipher_suites`, `http2`, ...) are refused, as is any key it
//! does not know: a setting that silently did nothing would be worse. The file is read again
//! when it changes (checked on each connection); a changed file that is wrong is reported once
//! and the previous settings stay.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::SystemTime,
};

use base64::Engine as _;
use hyper::header::{HeaderName, HeaderValue};
use rustls::{
    RootCertStore, ServerConfig,
    server::WebPkiClientVerifier,
    version::{TLS12, TLS13},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio_rustls::TlsAcceptor;

/// The file as exporter-toolkit writes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_auth_type: Option<String>,
    client_ca_file: Option<PathBuf>,
    min_version: Option<String>,
    max_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    headers: Option<BTreeMap<String, String>>,
}

/// Settings read from the file.
#[derive(Default)]
pub struct Settings {
    /// TLS for every connection, when configured.
    pub tls: Option<TlsAcceptor>,
    /// bcrypt hashes by user name; none means no authentication.
    users: BTreeMap<String, String>,
    /// Added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Settings {
    pub fn authenticates(&self) -> bool {
        !self.users.is_empty()
    }
}

/// The settings in force, read again when the file changes.
pub struct Web {
    path: Option<PathBuf>,
    current: RwLock<(Arc<Settings>, Option<SystemTime>)>,
    /// Per user, SHA-256 of the last password that bcrypt accepted and its hash.
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

/// A hash to check unknown users' passwords against, so that they cost what known ones do.
const DECOY: &str = "$2y$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

impl Web {
    /// No file: plain HTTP, no authentication.
    pub fn none() -> Arc<Web> {
        Arc::new(Web {
            path: None,
            current: RwLock::new((Arc::new(Settings::default()), None)),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Reads `path`; anything wrong with it is one line for the user.
    pub fn load(path: &Path) -> Result<Arc<Web>, String> {
        let settings = read(path)?;
        Ok(Arc::new(Web {
            path: Some(path.to_owned()),
            current: RwLock::new((Arc::new(settings), modified(path))),
            verified: Mutex::new(HashMap::new()),
        }))
    }

    /// The settings for a new connection: the file's, read again if it changed since.
    pub fn current(&self) -> Arc<Settings> {
        let (settings, seen) = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(path) = &self.path else {
            return settings;
        };
        let now = modified(path);
        if now == seen {
            return settings;
        }
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        current.1 = now;
        match read(path) {
            Ok(fresh) => {
                eprintln!("tracer: --web-config: {} read again", path.display());
                self.verified
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                current.0 = Arc::new(fresh);
            }
            Err(err) => {
                eprintln!(
                    "tracer: warning: --web-config changed but {err}; the previous settings stay"
                );
            }
        }
        Arc::clone(&current.0)
    }

    /// Whether `authorization` (the request's header) names a user of `settings` with their
    /// password. Runs bcrypt at most once per user and password: call it off the runtime's
    /// thread.
    pub fn authorized(&self, settings: &Settings, authorization: Option<&HeaderValue>) -> bool {
        if !settings.authenticates() {
            return true;
        }
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let (hash, known) = match settings.users.get(&user) {
            Some(hash) => (hash.as_str(), true),
            None => (DECOY, false),
        };
        let digest: [u8; 32] = Sha256::new()
            .chain_update(password.as_bytes())
            .chain_update([0])
            .chain_update(hash.as_bytes())
            .finalize()
            .into();
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&user)
            .is_some_and(|seen| bool::from(seen.ct_eq(&digest)));
        if cached {
            return known;
        }
        let good = bcrypt::verify(password.as_bytes(), hash).unwrap_or(false) && known;
        if good {
            self.verified
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(user, digest);
        }
        good
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `Basic base64(user:password)`.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let encoded = value.to_str().ok()?.strip_prefix("Basic ")?.trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Reads and checks the whole file: every error names the file and what to fix.
fn read(path: &Path) -> Result<Settings, String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    let file: File = if text.trim().is_empty() {
        File::default()
    } else {
        serde_yaml_ng::from_str(&text)
            .map_err(|err| format!("{shown} is not a web configuration: {err}"))?
    };
    let mut users = BTreeMap::new();
    for (user, hash) in file.basic_auth_users.unwrap_or_default() {
        if user.contains(':') {
            return Err(format!("{shown}: user name {user:?} holds a ':'"));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(format!(
                "{shown}: the password of {user:?} is not a bcrypt hash (make one with \
                 `htpasswd -nbB USER PASSWORD`)"
            ));
        }
        users.insert(user, hash);
    }
    let mut headers = Vec::new();
    for (name, value) in file
        .http_server_config
        .and_then(|http| http.headers)
        .unwrap_or_default()
    {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{shown}: {name:?} is not a header name"))?;
        if [
            hyper::header::CONTENT_TYPE,
            hyper::header::CONTENT_LENGTH,
            hyper::header::WWW_AUTHENTICATE,
        ]
        .contains(&header)
        {
            return Err(format!("{shown}: tracer sets the header {name} itself"));
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("{shown}: the value of header {name} is not valid"))?;
        headers.push((header, value));
    }
    let tls = file
        .tls_server_config
        .map(|tls| tls_acceptor(path, tls))
        .transpose()?;
    Ok(Settings {
        tls,
        users,
        headers,
    })
}

fn tls_acceptor(path: &Path, tls: TlsFile) -> Result<TlsAcceptor, String> {
    let shown = path.display();
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(Iterator::collect)
        .map_err(|err| {
            format!(
                "{shown}: cannot read the certificate {}: {err}",
                tls.cert_file.display()
            )
        })?;
    if certificates.is_empty() {
        return Err(format!(
            "{shown}: {} holds no certificate",
            tls.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|err| {
        format!(
            "{shown}: cannot read the key {}: {err}",
            tls.key_file.display()
        )
    })?;
    let version = |name: &Option<String>, default| match name.as_deref() {
        None => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(other) => Err(format!(
            "{shown}: TLS version {other:?} is not offered (TLS12 or TLS13)"
        )),
    };
    let (min, max) = (
        version(&tls.min_version, 12)?,
        version(&tls.max_version, 13)?,
    );
    if min > max {
        return Err(format!("{shown}: min_version is above max_version"));
    }
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [(12, &TLS12), (13, &TLS13)]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, version)| version)
        .collect();
    // ring, not aws-lc-rs: no C library to build, and the classic key exchanges it offers
    // (X25519, P-256, P-384) are what Prometheus' Go TLS client offers too; rustls deprecates
    // ring's provider only for lacking the post-quantum hybrid.
    #[expect(
        deprecated,
        reason = "ring's provider, without post-quantum key exchange"
    )]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|err| format!("{shown}: {err}"))?;
    let required = match tls.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => None,
        "RequireAnyClientCert" | "RequireAndVerifyClientCert" => Some(true),
        "VerifyClientCertIfGiven" => Some(false),
        // Asking for a certificate without checking it would trust anyone who has one.
        other => {
            return Err(format!(
                "{shown}: client_auth_type {other:?} is not offered (NoClientCert, \
                 VerifyClientCertIfGiven, RequireAnyClientCert, RequireAndVerifyClientCert)"
            ));
        }
    };
    let builder = match required {
        None => builder.with_no_client_auth(),
        Some(required) => {
            let ca = tls
                .client_ca_file
                .as_ref()
                .ok_or_else(|| format!("{shown}: client_auth_type needs client_ca_file"))?;
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(ca)
                .map_err(|err| format!("{shown}: cannot read {}: {err}", ca.display()))?
            {
                let certificate = certificate
                    .map_err(|err| format!("{shown}: cannot read {}: {err}", ca.display()))?;
                roots
                    .add(certificate)
                    .map_err(|err| format!("{shown}: {}: {err}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if required {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|err| format!("{shown}: {}: {err}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(certificates, key)
        .map_err(|err| format!("{shown}: the certificate and key do not go together: {err}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A web configuration file in the temporary directory, removed when dropped.
    struct Config(PathBuf);

    impl Config {
        fn with(text: &str) -> Config {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("tracer-web-{}-{n}.yml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Config(path)
        }

        /// Writes `text` with a modification time `seconds` on, as a later write would have.
        fn rewrite(&self, text: &str, seconds: u64) {
            std::fs::write(&self.0, text).unwrap();
            let later = SystemTime::now() + std::time::Duration::from_secs(seconds);
            let file = std::fs::File::options().write(true).open(&self.0).unwrap();
            file.set_modified(later).unwrap();
        }
    }

    impl Drop for Config {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn header(user: &str, password: &str) -> HeaderValue {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap()
    }

    #[test]
    fn a_user_needs_the_right_password_and_a_verified_one_is_remembered() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let config = Config::with(&format!("basic_auth_users:\n  prometheus: {hash}\n"));
        let web = Web::load(&config.0).unwrap();
        let settings = web.current();
        assert!(!web.authorized(&settings, None));
        assert!(!web.authorized(&settings, Some(&header("prometheus", "wrong"))));
        assert!(!web.authorized(&settings, Some(&header("nobody", "s3cret"))));
        assert!(web.authorized(&settings, Some(&header("prometheus", "s3cret"))));
        assert_eq!(web.verified.lock().unwrap().len(), 1);
        // Remembered: accepted again, and a wrong password still refused.
        assert!(web.authorized(&settings, Some(&header("prometheus", "s3cret"))));
        assert!(!web.authorized(&settings, Some(&header("prometheus", "s3cret "))));
    }

    #[test]
    fn an_unknown_user_costs_a_whole_bcrypt_check() {
        // A decoy that did not parse would be refused at once, and its speed would tell.
        assert!(DECOY.parse::<bcrypt::HashParts>().is_ok());
        assert_eq!(bcrypt::verify("anything", DECOY).ok(), Some(false));
    }

    #[test]
    fn what_is_wrong_with_a_file_is_said_in_one_line() {
        let cases = [
            (
                "tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n",
                "cannot read the certificate",
            ),
            ("basic_auth_users:\n  a: plaintext\n", "not a bcrypt hash"),
            (
                "http_server_config:\n  http2: true\n",
                "unknown field `http2`",
            ),
            ("tls_config: {}\n", "unknown field `tls_config`"),
            ("basic_auth_users: [a\n", "is not a web configuration"),
            (
                "http_server_config:\n  headers:\n    Content-Type: x\n",
                "sets the header",
            ),
        ];
        for (text, expected) in cases {
            let config = Config::with(text);
            let err = Web::load(&config.0).err().expect(text);
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = Web::load(Path::new("/nonexistent/web.yml")).err().unwrap();
        assert!(err.starts_with("cannot read /nonexistent/web.yml"), "{err}");
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_change_keeps_the_settings() {
        let first = bcrypt::hash("one", 4).unwrap();
        let config = Config::with(&format!("basic_auth_users:\n  a: {first}\n"));
        let web = Web::load(&config.0).unwrap();
        assert!(web.authorized(&web.current(), Some(&header("a", "one"))));
        let second = bcrypt::hash("two", 4).unwrap();
        config.rewrite(&format!("basic_auth_users:\n  a: {second}\n"), 10);
        let settings = web.current();
        assert!(!web.authorized(&settings, Some(&header("a", "one"))));
        assert!(web.authorized(&settings, Some(&header("a", "two"))));
        config.rewrite("basic_auth_users: [\n", 20);
        assert!(web.authorized(&web.current(), Some(&header("a", "two"))));
    }
}
