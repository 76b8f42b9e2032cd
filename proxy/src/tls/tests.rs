use std::path::Path;
use std::time::Duration;

use rouse_nats::config::{CertKeyFiles, ProxyTlsConfig, TlsVersion};

use super::*;

/// A self-signed certificate for `names`, written as `<stem>.crt` and
/// `<stem>.key` under `dir`.
fn write_cert(dir: &Path, stem: &str, names: &[&str]) -> CertKeyFiles {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).expect("generate");
    let files = CertKeyFiles {
        cert_file: dir.join(format!("{stem}.crt")),
        key_file: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&files.cert_file, generated.cert.pem()).expect("write cert");
    std::fs::write(&files.key_file, generated.signing_key.serialize_pem()).expect("write key");
    files
}

fn tls_config(certs: Vec<CertKeyFiles>) -> ProxyTlsConfig {
    ProxyTlsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        certs,
        min_version: TlsVersion::Tls12,
        handshake_timeout: Duration::from_secs(10),
        reload_interval: Duration::from_secs(5),
    }
}

fn load(certs: &[CertKeyFiles]) -> Result<CertSet, Vec<Problem>> {
    CertSet::load(certs, &read_all(certs))
}

/// The leaf certificate `set` serves for `sni`.
fn served<'a>(set: &'a CertSet, sni: Option<&str>) -> &'a [u8] {
    set.choose(sni).cert[0].as_ref()
}

fn leaf(files: &CertKeyFiles) -> Vec<u8> {
    let bytes = std::fs::read(&files.cert_file).expect("read");
    CertificateDer::from_pem_slice(&bytes)
        .expect("pem")
        .as_ref()
        .to_vec()
}

#[test]
fn sni_picks_exact_names_then_wildcards_and_falls_back_to_the_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_cert(dir.path(), "a", &["a.test", "alt-a.test"]);
    let b = write_cert(dir.path(), "b", &["b.test"]);
    let wild = write_cert(dir.path(), "wild", &["*.wild.test"]);
    let exact = write_cert(dir.path(), "exact", &["x.wild.test"]);
    let set = load(&[a.clone(), b.clone(), wild.clone(), exact.clone()]).expect("load");
    assert_eq!(served(&set, Some("a.test")), leaf(&a));
    assert_eq!(served(&set, Some("alt-a.test")), leaf(&a));
    assert_eq!(
        served(&set, Some("B.Test")),
        leaf(&b),
        "names are case-blind"
    );
    assert_eq!(served(&set, Some("y.wild.test")), leaf(&wild));
    assert_eq!(
        served(&set, Some("x.wild.test")),
        leaf(&exact),
        "an exact name beats a wildcard listed before it"
    );
    // A wildcard covers one label only.
    assert_eq!(served(&set, Some("deep.y.wild.test")), leaf(&a));
    assert_eq!(served(&set, Some("wild.test")), leaf(&a));
    assert_eq!(served(&set, Some("unknown.test")), leaf(&a));
    assert_eq!(served(&set, None), leaf(&a));
}

fn reasons_of(problems: &[Problem], key: &str) -> String {
    problems
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, reason)| reason.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn missing_files_are_named_with_their_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_cert(dir.path(), "good", &["a.test"]);
    let missing = CertKeyFiles {
        cert_file: dir.path().join("nope.crt"),
        key_file: dir.path().join("nope.key"),
    };
    let problems = check_files(&tls_config(vec![good, missing]));
    let cert = reasons_of(&problems, "proxy.tls.certs[1].cert_file");
    assert!(
        cert.contains("nope.crt") && cert.contains("no such file"),
        "{problems:?}"
    );
    let key = reasons_of(&problems, "proxy.tls.certs[1].key_file");
    assert!(
        key.contains("nope.key") && key.contains("no such file"),
        "{problems:?}"
    );
    assert_eq!(
        problems.len(),
        2,
        "the good pair has no problem: {problems:?}"
    );
}

#[test]
fn files_that_are_not_pem_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pair = write_cert(dir.path(), "a", &["a.test"]);
    let junk = dir.path().join("junk.txt");
    std::fs::write(&junk, "this is not a certificate\n").expect("write");
    pair.cert_file = junk.clone();
    let problems = check_files(&tls_config(vec![pair.clone()]));
    let cert = reasons_of(&problems, "proxy.tls.certs[0].cert_file");
    assert!(
        cert.contains("junk.txt") && cert.contains("no PEM certificate"),
        "{problems:?}"
    );

    // A certificate where the key should be: PEM, but no private key.
    let mut swapped = write_cert(dir.path(), "b", &["b.test"]);
    swapped.key_file = swapped.cert_file.clone();
    let problems = check_files(&tls_config(vec![swapped]));
    let key = reasons_of(&problems, "proxy.tls.certs[0].key_file");
    assert!(key.contains("no PEM private key"), "{problems:?}");

    // A PEM block cut off before its end line.
    let cut = dir.path().join("cut.crt");
    let text = std::fs::read_to_string(dir.path().join("a.crt")).expect("read");
    std::fs::write(&cut, &text[..text.len() / 2]).expect("write");
    pair.cert_file = cut;
    let problems = check_files(&tls_config(vec![pair]));
    let cert = reasons_of(&problems, "proxy.tls.certs[0].cert_file");
    assert!(cert.contains("not valid PEM"), "{problems:?}");
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_cert(dir.path(), "a", &["a.test"]);
    let b = write_cert(dir.path(), "b", &["b.test"]);
    let mixed = CertKeyFiles {
        cert_file: a.cert_file.clone(),
        key_file: b.key_file.clone(),
    };
    let problems = check_files(&tls_config(vec![a, mixed]));
    let key = reasons_of(&problems, "proxy.tls.certs[1].key_file");
    assert!(
        key.contains("b.key") && key.contains("does not match the certificate in"),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[test]
fn reload_takes_a_good_change_and_keeps_the_old_set_on_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_cert(dir.path(), "site", &["site.test"]);
    let first = leaf(&files);
    let metrics = Arc::new(ProxyMetrics::new());
    let (_, mut reloader) =
        start(&tls_config(vec![files.clone()]), Arc::clone(&metrics)).expect("start");
    let current = |reloader: &Reloader| served(&reloader.resolver.current.load(), None).to_vec();

    // Unchanged files: nothing happens.
    reloader.look(read_all(&reloader.certs));
    assert_eq!(
        (metrics.tls_reloads.get(), metrics.tls_reload_errors.get()),
        (0, 0)
    );

    // A new certificate and key: taken.
    write_cert(dir.path(), "site", &["site.test"]);
    let second = leaf(&files);
    assert_ne!(first, second);
    reloader.look(read_all(&reloader.certs));
    assert_eq!(current(&reloader), second);
    assert_eq!(
        (metrics.tls_reloads.get(), metrics.tls_reload_errors.get()),
        (1, 0)
    );

    // A broken key: refused once, the second certificate stays in use, and
    // looking again at the same broken bytes counts nothing more.
    std::fs::write(&files.key_file, "garbage").expect("write");
    reloader.look(read_all(&reloader.certs));
    reloader.look(read_all(&reloader.certs));
    assert_eq!(current(&reloader), second);
    assert_eq!(
        (metrics.tls_reloads.get(), metrics.tls_reload_errors.get()),
        (1, 1)
    );
}

#[test]
fn start_fails_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = write_cert(dir.path(), "a", &["a.test"]);
    files.key_file = dir.path().join("gone.key");
    let Err(err) = start(&tls_config(vec![files]), Arc::new(ProxyMetrics::new())) else {
        panic!("started without a key");
    };
    let message = err.to_string();
    assert!(
        message.contains("proxy.tls.certs[0].key_file") && message.contains("gone.key"),
        "{message}"
    );
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = write_cert(dir.path(), "a", &["a.test"]);
    let mut config = tls_config(vec![files]);
    config.handshake_timeout = Duration::from_millis(100);
    let (handshake, _) = start(&config, Arc::new(ProxyMetrics::new())).expect("start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Connected, sends nothing.
    let _client = TcpStream::connect(addr).await.expect("connect");
    let (server_side, _) = listener.accept().await.expect("accept");
    let outcome = tokio::time::timeout(Duration::from_secs(30), handshake.handshake(server_side))
        .await
        .expect("the handshake gave up by itself");
    match outcome {
        Ok(_) => panic!("a handshake happened with a silent client"),
        Err(err) => assert_eq!(err.kind(), io::ErrorKind::TimedOut),
    }
}
