//! `proxy.tls`: the proxy's TLS listener, next to the plaintext `proxy.listen`.
//!
//! Only the shape of the section lives here, with the checks serde and plain
//! values allow (a known `min_version`, at least one certificate, sane
//! durations). Whether the files hold a certificate and a matching key is
//! checked by rouse-proxy, which has the TLS library: the shared config crate
//! stays free of crypto. The defaults sit here rather than in `defaults.rs`
//! so that the whole section reads in one place.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// TLS termination by the proxy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyTlsConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The first is served to clients without SNI or with an unknown name.
    pub certs: Vec<CertKeyFiles>,
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Time a client gets to finish the TLS handshake.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often the certificate files are looked at for changes.
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    pub reload_interval: Duration,
}

/// One certificate chain and its private key, both PEM.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertKeyFiles {
    /// The leaf certificate first, then any intermediates.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The oldest TLS version a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Accepts `"1.2"` and also an unquoted `1.2`, which YAML reads as a number.
impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"1.2\" or \"1.3\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TlsVersion, E> {
                match v.trim() {
                    "1.2" => Ok(TlsVersion::Tls12),
                    "1.3" => Ok(TlsVersion::Tls13),
                    other => Err(E::custom(format!(
                        "unsupported min_version `{other}`: use \"1.2\" or \"1.3\""
                    ))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

/// Problems serde cannot see, as (key path, reason).
pub(super) fn check(tls: &ProxyTlsConfig, plain: SocketAddr) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if tls.certs.is_empty() {
        problems.push((
            "proxy.tls.certs".into(),
            "needs at least one {cert_file, key_file}".into(),
        ));
    }
    if tls.listen == plain {
        problems.push((
            "proxy.tls.listen".into(),
            format!("{} is already `proxy.listen`", tls.listen),
        ));
    }
    for (key, value) in [
        ("handshake_timeout", tls.handshake_timeout),
        ("reload_interval", tls.reload_interval),
    ] {
        if value.is_zero() {
            problems.push((format!("proxy.tls.{key}"), "must be above 0".into()));
        } else if value > Duration::from_secs(24 * 3600) {
            problems.push((format!("proxy.tls.{key}"), "must be at most 24h".into()));
        }
    }
    for (i, pair) in tls.certs.iter().enumerate() {
        for (key, path) in [("cert_file", &pair.cert_file), ("key_file", &pair.key_file)] {
            if path.as_os_str().is_empty() {
                problems.push((format!("proxy.tls.certs[{i}].{key}"), "is empty".into()));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError, ConfigIssue};
    use super::*;

    fn with_tls(tls: &str) -> String {
        format!(
            "proxy:\n  listen: 127.0.0.1:8080\n  tls:\n{tls}services: []\n",
            tls = tls
                .lines()
                .map(|line| format!("    {line}\n"))
                .collect::<String>()
        )
    }

    fn parse(source: &str) -> Result<Config, Vec<ConfigIssue>> {
        match Config::parse(Path::new("rouse.yaml"), source) {
            Ok(config) => Ok(config),
            Err(ConfigError::Invalid(issues)) => Err(issues),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn defaults_and_an_unquoted_version() {
        let source = with_tls("certs:\n  - {cert_file: a.crt, key_file: a.key}\n");
        let config = parse(&source).expect("valid");
        let tls = config.proxy.tls.expect("tls");
        assert_eq!(tls.listen, default_listen());
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        assert_eq!(tls.certs[0].key_file, PathBuf::from("a.key"));
        // YAML reads an unquoted 1.3 as a number.
        let source = with_tls("certs: [{cert_file: a.crt, key_file: a.key}]\nmin_version: 1.3\n");
        let tls = parse(&source).expect("valid").proxy.tls.expect("tls");
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert!(parse("proxy: {}\n").expect("valid").proxy.tls.is_none());
    }

    #[test]
    fn an_unsupported_version_names_key_and_line() {
        let source =
            with_tls("certs: [{cert_file: a.crt, key_file: a.key}]\nmin_version: \"1.1\"\n");
        let issues = parse(&source).expect_err("1.1 accepted");
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].key, "proxy.tls.min_version");
        assert_eq!(issues[0].line, Some(5));
        assert!(
            issues[0].reason.contains("unsupported min_version `1.1`"),
            "{issues:?}"
        );
    }

    #[test]
    fn no_certificates_and_a_clash_with_the_plain_listener() {
        let source = with_tls("listen: 127.0.0.1:8080\ncerts: []\nhandshake_timeout: 0s\n");
        let issues = parse(&source).expect_err("accepted");
        let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "proxy.tls.certs",
                "proxy.tls.listen",
                "proxy.tls.handshake_timeout"
            ],
            "{issues:?}"
        );
        assert_eq!(issues[0].line, Some(5));
    }
}
