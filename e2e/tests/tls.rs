//! TLS termination (`proxy.tls`), end to end: the real rouse-proxy with a TLS
//! listener in front of a real rouse-echo replica.
//!
//! What a client of an HTTPS proxy relies on: the certificate it is shown
//! is the one for the name it asked for (SNI), h2 is negotiated by ALPN when
//! offered, the replica learns the request came over HTTPS
//! (`X-Forwarded-Proto`), certificates replaced on disk are served without a
//! restart (and a broken replacement leaves the old ones in place), and
//! `--check` names the file, line, key and reason of a bad certificate or
//! key. Clients: rustls (tokio-rustls, with a hyper h2 client or a raw
//! HTTP/1.1 exchange) and curl. Certificates come from a throwaway CA made
//! with rcgen in a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rouse_e2e::config::line_of;
use rouse_e2e::{bin, free_addr, mentions_line, poll_until, Cluster, Config, Service};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Bound of one client exchange (connect, handshake, request, response).
const EXCHANGE: Duration = Duration::from_secs(30);
/// Bound of waiting for the proxy to notice changed files.
const RELOAD_DEADLINE: Duration = Duration::from_secs(60);

/// A throwaway CA and the certificates it issued, as files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate as written to disk.
#[derive(Clone)]
struct Leaf {
    cert_file: PathBuf,
    key_file: PathBuf,
    der: Vec<u8>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(DnType::CommonName, "rouse e2e test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("ca cert");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new key and a certificate for `names` with subject CN `cn`,
    /// written as `<stem>.crt` / `<stem>.key` (replacing what was there:
    /// key first, then certificate).
    fn issue(&self, stem: &str, cn: &str, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("sign leaf");
        let leaf = Leaf {
            cert_file: self.path(&format!("{stem}.crt")),
            key_file: self.path(&format!("{stem}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&leaf.key_file, key.serialize_pem()).expect("write key");
        std::fs::write(&leaf.cert_file, cert.pem()).expect("write cert");
        leaf
    }
}

/// JSON strings are YAML double-quoted scalars.
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The value of `proxy.tls` for these (cert, key) files.
fn tls_yaml(listen: SocketAddr, pairs: &[(&Path, &Path)]) -> String {
    let certs: Vec<String> = pairs
        .iter()
        .map(|(cert, key)| {
            format!(
                "{{cert_file: {}, key_file: {}}}",
                q(&cert.to_string_lossy()),
                q(&key.to_string_lossy())
            )
        })
        .collect();
    format!(
        "{{listen: {}, certs: [{}], reload_interval: \"200ms\", handshake_timeout: \"5s\"}}",
        q(&listen.to_string()),
        certs.join(", ")
    )
}

/// Takes any server certificate, so a test can look at what it was shown
/// for a name the certificate does not cover. Signatures are still checked.
#[derive(Debug)]
struct ShowMeAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for ShowMeAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// How a test client checks the server.
enum Trust<'a> {
    /// Verifies the chain to this CA and the name, like a browser.
    Ca(&'a CertificateDer<'static>),
    /// Takes any certificate; `sni: false` sends no server name at all.
    Anything { sni: bool },
}

/// A TLS connection to `addr` for `name`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    name: &str,
    alpn: &[&[u8]],
    trust: Trust<'_>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let mut config = match trust {
        Trust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone())?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Anything { sni } => {
            let mut config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ShowMeAnything(provider)))
                .with_no_client_auth();
            config.enable_sni = sni;
            config
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = TlsConnector::from(Arc::new(config));
    let server_name = ServerName::try_from(name.to_string())?;
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        anyhow::Ok(connector.connect(server_name, tcp).await?)
    };
    tokio::time::timeout(EXCHANGE, exchange).await?
}

/// The leaf certificate the server presented on `stream`.
fn presented(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.as_ref().to_vec())
        .unwrap_or_default()
}

fn alpn(stream: &TlsStream<TcpStream>) -> Option<String> {
    let (_, connection) = stream.get_ref();
    connection
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// A response as the test client saw it.
struct Answer {
    version: hyper::Version,
    status: u16,
    forwarded_proto: String,
    echoed_host: String,
    body: String,
}

/// `GET https://<host><path>` as HTTP/2 over `stream`.
async fn h2_get(stream: TlsStream<TcpStream>, host: String, path: &str) -> anyhow::Result<Answer> {
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        let request =
            hyper::Request::get(format!("https://{host}{path}")).body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let (version, status) = (response.version(), response.status().as_u16());
        let (forwarded_proto, echoed_host) =
            (header("x-echo-forwarded-proto"), header("x-echo-host"));
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok(Answer {
            version,
            status,
            forwarded_proto,
            echoed_host,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(EXCHANGE, exchange).await?
}

/// `GET /` as HTTP/1.1, written by hand, over `stream`; the whole answer.
async fn http1_get(mut stream: TlsStream<TcpStream>, host: &str) -> anyhow::Result<String> {
    let exchange = async {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        // Bounded by the size and the exchange timeout; a peer closing
        // without close_notify after the response is still an answer.
        while answer.len() < 1 << 20 {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(_) if !answer.is_empty() => break,
                Err(err) => return Err(err.into()),
            }
        }
        anyhow::Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(EXCHANGE, exchange).await?
}

/// What curl made of `https://<host>:<port>/` (`extra`: e.g. `--http1.1`).
struct Curl {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn curl(addr: SocketAddr, host: &str, ca: &Path, extra: &[&str]) -> Curl {
    let port = addr.port();
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-v", "--max-time", "30", "-D", "-"])
        .arg("--resolve")
        .arg(format!("{host}:{port}:{}", addr.ip()))
        .arg("--cacert")
        .arg(ca)
        .args(["-w", "\nhttp_version=%{http_version}\n"])
        .args(extra)
        .arg(format!("https://{host}:{port}/"))
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("curl did not finish within 60 s")
        .expect("run curl (is it installed?)");
    Curl {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The value of an unlabelled counter in Prometheus text.
fn counter(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Two certificates chosen by SNI (verified by rustls and by curl), h2 by
/// ALPN and HTTP/1.1 when only that is offered, `X-Forwarded-Proto: https`
/// at the replica, certificates replaced on disk served without a restart
/// while a broken replacement is refused, and SIGTERM finishing a request
/// in flight over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_alpn_forwarded_proto_and_reload() {
    let pki = Pki::new();
    let a = pki.issue("a", "a.test", &["a.test"]);
    let b = pki.issue("b", "b.test", &["b.test", "*.b.test"]);
    let tls_listen = free_addr();
    let tls = tls_yaml(
        tls_listen,
        &[(&a.cert_file, &a.key_file), (&b.cert_file, &b.key_file)],
    );
    let mut cluster = Cluster::builder()
        .service(Service::new("echo", "a.test").hosts(&["a.test", "b.test", "x.b.test"]))
        .proxy_key("tls", &tls)
        .start()
        .await;
    let ca = pki.ca_der();

    // The plaintext listener is unchanged, and says so to the replica.
    let plain = cluster.get_ok("a.test", "/").await;
    assert_eq!(
        plain.header("x-echo-forwarded-proto"),
        Some("http"),
        "{plain}"
    );

    // rustls, verifying against the CA: each name gets its certificate,
    // h2 is negotiated, and the replica sees https.
    for (host, leaf) in [("a.test", &a), ("b.test", &b), ("x.b.test", &b)] {
        let stream = connect(tls_listen, host, &[b"h2", b"http/1.1"], Trust::Ca(&ca))
            .await
            .unwrap_or_else(|e| cluster_panic(&cluster, &format!("TLS to {host}: {e:#}")));
        assert!(presented(&stream) == leaf.der, "{host}: wrong certificate");
        assert_eq!(alpn(&stream).as_deref(), Some("h2"), "{host}: ALPN");
        let answer = h2_get(stream, host.to_string(), "/")
            .await
            .unwrap_or_else(|e| cluster_panic(&cluster, &format!("h2 GET {host}: {e:#}")));
        assert_eq!(answer.version, hyper::Version::HTTP_2);
        assert_eq!(answer.status, 200, "{host}: {}", answer.body);
        assert!(answer.body.starts_with("handled by"), "{}", answer.body);
        assert_eq!(answer.forwarded_proto, "https", "{host}");
        assert_eq!(answer.echoed_host, host);
    }

    // A client offering only HTTP/1.1 is served HTTP/1.1.
    let stream = connect(tls_listen, "b.test", &[b"http/1.1"], Trust::Ca(&ca))
        .await
        .unwrap_or_else(|e| cluster_panic(&cluster, &format!("TLS to b.test: {e:#}")));
    assert_eq!(alpn(&stream).as_deref(), Some("http/1.1"));
    let answer = http1_get(stream, "b.test")
        .await
        .expect("HTTP/1.1 over TLS");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-echo-forwarded-proto: https"),
        "{answer}"
    );
    assert!(answer.contains("handled by"), "{answer}");

    // No SNI, or a name no certificate has: the first certificate.
    for (name, sni) in [("a.test", false), ("unknown.test", true)] {
        let stream = connect(tls_listen, name, &[b"h2"], Trust::Anything { sni })
            .await
            .unwrap_or_else(|e| cluster_panic(&cluster, &format!("TLS ({name}): {e:#}")));
        assert!(
            presented(&stream) == a.der,
            "{name} (sni {sni}): not the first certificate"
        );
    }

    // curl, verifying with the CA: the subject per name, h2 by default,
    // HTTP/1.1 when asked.
    for (host, cn, extra, version) in [
        ("a.test", "a.test", &[][..], "2"),
        ("b.test", "b.test", &["--http1.1"][..], "1.1"),
    ] {
        let run = curl(tls_listen, host, &pki.ca_file(), extra).await;
        let context = format!("curl {host}:\n{}\n{}", run.stdout, run.stderr);
        assert!(run.ok, "{context}");
        assert!(
            run.stderr.contains(&format!("subject: CN={cn}")),
            "{context}"
        );
        assert!(run.stdout.contains("handled by"), "{context}");
        assert!(
            run.stdout.contains(&format!("http_version={version}\n")),
            "{context}"
        );
        assert!(
            run.stdout
                .to_ascii_lowercase()
                .contains("x-echo-forwarded-proto: https"),
            "{context}"
        );
    }

    // A broken replacement is refused and counted; a.test keeps its
    // certificate.
    std::fs::write(&a.cert_file, "not a certificate\n").expect("break a.crt");
    let errors = poll_until("the broken a.crt is refused", RELOAD_DEADLINE, || async {
        let metrics = cluster.proxy_metrics(0).await.ok()?;
        counter(&metrics, "rouse_tls_reload_errors_total").filter(|n| *n >= 1.0)
    })
    .await;
    assert!(errors >= 1.0);
    let stream = connect(tls_listen, "a.test", &[b"h2"], Trust::Ca(&ca))
        .await
        .unwrap_or_else(|e| cluster_panic(&cluster, &format!("TLS after a refused reload: {e:#}")));
    assert!(
        presented(&stream) == a.der,
        "the refused files replaced the certificate"
    );
    assert!(
        cluster
            .proxy_logs(0)
            .contains("proxy.tls.certs[0].cert_file"),
        "the refusal is logged with its key"
    );

    // A good replacement is served to new handshakes, without a restart.
    let renewed = pki.issue("a", "a.test", &["a.test"]);
    assert!(renewed.der != a.der);
    poll_until(
        "a new handshake shows the renewed certificate",
        RELOAD_DEADLINE,
        || async {
            let stream = connect(tls_listen, "a.test", &[b"h2"], Trust::Ca(&ca))
                .await
                .ok()?;
            (presented(&stream) == renewed.der).then_some(())
        },
    )
    .await;
    let stream = connect(tls_listen, "a.test", &[b"h2"], Trust::Ca(&ca))
        .await
        .expect("TLS with the renewed certificate");
    let answer = h2_get(stream, "a.test".into(), "/")
        .await
        .expect("h2 GET after reload");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let metrics = cluster.proxy_metrics(0).await.expect("metrics");
    assert!(
        counter(&metrics, "rouse_tls_reloads_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // b.test was not touched by any of it.
    let stream = connect(tls_listen, "b.test", &[b"h2"], Trust::Ca(&ca))
        .await
        .expect("TLS to b.test");
    assert!(presented(&stream) == b.der);

    // SIGTERM: a request in flight over TLS is finished, then exit 0.
    let stream = connect(tls_listen, "a.test", &[b"h2"], Trust::Ca(&ca))
        .await
        .expect("TLS before SIGTERM");
    let in_flight = tokio::spawn(h2_get(stream, "a.test".into(), "/sleep/3000"));
    cluster
        .wait_until(
            "the TLS request is in flight",
            Duration::from_secs(20),
            || async { cluster.proxy_metric(0, "rouse_in_flight", "echo").await == Some(1.0) },
        )
        .await;
    assert!(
        !in_flight.is_finished(),
        "the 3 s request finished before SIGTERM"
    );
    cluster.proxy_proc(0).sigterm();
    let answer = match in_flight.await.expect("request task panicked") {
        Ok(answer) => answer,
        Err(e) => cluster_panic(&cluster, &format!("TLS request cut by SIGTERM: {e:#}")),
    };
    assert_eq!(answer.status, 200, "{}", answer.body);
    let status = cluster
        .proxy_proc(0)
        .wait_exit(Duration::from_secs(30))
        .await;
    assert_eq!(status.code(), Some(0), "proxy exit after SIGTERM: {status}");
}

/// Fails with the logs of every process in the cluster.
fn cluster_panic(cluster: &Cluster, message: &str) -> ! {
    panic!("{message}\n{}", cluster.dump_logs())
}

// ----- --check -----

/// A config with `proxy.tls` for these files; NATS is a closed port, since
/// `--check` must not need it.
fn config_with_tls(dir: &Path, cert: &Path, key: &Path) -> String {
    let mut config = Config::new("nats://127.0.0.1:1", &dir.join("state"), "tls-check")
        .service(Service::new("echo", "a.test"));
    config
        .proxy_extra
        .push(("tls".into(), tls_yaml(free_addr(), &[(cert, key)])));
    config.to_yaml()
}

struct Exit {
    code: Option<i32>,
    stderr: String,
}

/// `rouse-proxy --config <path> [--check]`, bounded.
async fn run_proxy(path: &Path, check: bool) -> Exit {
    let mut cmd = tokio::process::Command::new(bin("rouse-proxy"));
    cmd.arg("--config").arg(path);
    if check {
        cmd.arg("--check");
    }
    cmd.env_remove("ROUSE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("rouse-proxy did not exit within 30 s (did it start serving?)")
        .expect("run rouse-proxy");
    Exit {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `--check` (and a start without it) exits 2 naming the config file, the
/// line of `tls:`, `key` and every one of `words`.
async fn expect_rejected(dir: &Path, cert: &Path, key: &Path, bad_key: &str, words: &[&str]) {
    let yaml = config_with_tls(dir, cert, key);
    let path = dir.join("rouse.yaml");
    std::fs::write(&path, &yaml).expect("write config");
    let line = line_of(&yaml, "tls:", 0).expect("tls line");
    for check in [true, false] {
        let run = run_proxy(&path, check).await;
        let context = format!(
            "check {check}, exit {:?}:\n{}\n--- config ---\n{yaml}",
            run.code, run.stderr
        );
        assert_eq!(run.code, Some(2), "{context}");
        assert!(run.stderr.contains(&*path.to_string_lossy()), "{context}");
        assert!(mentions_line(&run.stderr, line), "line {line}: {context}");
        assert!(run.stderr.contains(&format!("`{bad_key}`")), "{context}");
        for word in words {
            assert!(run.stderr.contains(word), "`{word}`: {context}");
        }
    }
}

#[tokio::test]
async fn check_names_a_missing_file() {
    let pki = Pki::new();
    let a = pki.issue("a", "a.test", &["a.test"]);
    let missing = pki.path("missing.key");
    expect_rejected(
        pki.dir.path(),
        &a.cert_file,
        &missing,
        "proxy.tls.certs[0].key_file",
        &["missing.key", "no such file"],
    )
    .await;
}

#[tokio::test]
async fn check_names_a_file_that_is_not_pem() {
    let pki = Pki::new();
    let a = pki.issue("a", "a.test", &["a.test"]);
    let junk = pki.path("junk.crt");
    std::fs::write(&junk, "hello, I am not PEM\n").expect("write");
    expect_rejected(
        pki.dir.path(),
        &junk,
        &a.key_file,
        "proxy.tls.certs[0].cert_file",
        &["junk.crt", "no PEM certificate"],
    )
    .await;
}

#[tokio::test]
async fn check_names_a_key_that_does_not_match() {
    let pki = Pki::new();
    let a = pki.issue("a", "a.test", &["a.test"]);
    let b = pki.issue("b", "b.test", &["b.test"]);
    expect_rejected(
        pki.dir.path(),
        &a.cert_file,
        &b.key_file,
        "proxy.tls.certs[0].key_file",
        &["b.key", "does not match the certificate"],
    )
    .await;
}

#[tokio::test]
async fn check_passes_good_files() {
    let pki = Pki::new();
    let a = pki.issue("a", "a.test", &["a.test"]);
    let yaml = config_with_tls(pki.dir.path(), &a.cert_file, &a.key_file);
    let path = pki.path("rouse.yaml");
    std::fs::write(&path, &yaml).expect("write config");
    let run = run_proxy(&path, true).await;
    assert_eq!(run.code, Some(0), "{}\n--- config ---\n{yaml}", run.stderr);
}
