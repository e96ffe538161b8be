//! HTTPS with rustls: a generated CA signs the server certificate; rotating the certificate
//! files changes the certificate served on the next connection, without a restart and without
//! breaking a connection already open.

mod common;

use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca() -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "berth test CA");
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A leaf for localhost and 127.0.0.1 signed by `ca`: (cert PEM, key PEM, cert DER).
fn leaf(ca: &Ca, name: &str) -> (String, String, Vec<u8>) {
    let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn https_client(ca: &Ca) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .tls_info(true)
        .build()
        .unwrap()
}

async fn served_cert(c: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("TLS info");
    info.peer_certificate().expect("peer certificate").to_vec()
}

#[tokio::test]
async fn serves_https_and_picks_up_rotated_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let (cert1, key1, der1) = leaf(&ca, "first");
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, &cert1).unwrap();
    std::fs::write(&key_path, &key1).unwrap();
    let s = Server::start_with(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ]);
    let port = s.addr.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/v2/");
    // Plain HTTP is not served on the TLS port.
    let plain = client().get(s.url("/v2/")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // One client keeps its connection open across the rotation.
    let kept = https_client(&ca);
    assert_eq!(served_cert(&kept, &url).await, der1);
    assert_eq!(served_cert(&https_client(&ca), &url).await, der1);

    // Rotate the way a mounted Secret does: new files renamed into place.
    let (cert2, key2, der2) = leaf(&ca, "second");
    std::fs::write(dir.path().join("tls.crt.new"), &cert2).unwrap();
    std::fs::write(dir.path().join("tls.key.new"), &key2).unwrap();
    std::fs::rename(dir.path().join("tls.key.new"), &key_path).unwrap();
    std::fs::rename(dir.path().join("tls.crt.new"), &cert_path).unwrap();
    assert_eq!(
        served_cert(&https_client(&ca), &url).await,
        der2,
        "new connection, new cert"
    );
    // The connection opened before the rotation still works (and still shows the old cert).
    assert_eq!(served_cert(&kept, &url).await, der1);

    // A broken file keeps the last good certificate in service.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    assert_eq!(served_cert(&https_client(&ca), &url).await, der2);
    // Repaired in place (same inode, new content): picked up too.
    let (cert3, key3, der3) = leaf(&ca, "third");
    std::fs::write(&key_path, &key3).unwrap();
    std::fs::write(&cert_path, &cert3).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(served_cert(&https_client(&ca), &url).await, der3);
    assert!(
        s.logs
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reloaded the TLS certificate")),
        "the reload is logged"
    );
}
