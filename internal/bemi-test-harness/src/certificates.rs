//! Certificates for a TLS-enabled test cluster, generated in-process.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// File names inside the cluster directory.
pub(crate) const ROOT_CERT: &str = "root.crt";
pub(crate) const OTHER_ROOT_CERT: &str = "other-root.crt";
pub(crate) const SERVER_CERT: &str = "server.crt";
pub(crate) const SERVER_KEY: &str = "server.key";

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("self-sign the CA")
}

/// Writes a root certificate, a server certificate for `localhost` only (no IP address, so
/// `127.0.0.1` does not match it) signed by that root, its key, and an unrelated root.
pub(crate) fn write(dir: &Path) {
    let root = authority("bemi test root");
    let other = authority("bemi unrelated root");
    let server_key = KeyPair::generate().expect("server key");
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned()]).expect("server parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = params
        .signed_by(&server_key, &root)
        .expect("sign the server certificate");
    for (name, contents) in [
        (ROOT_CERT, root.pem()),
        (OTHER_ROOT_CERT, other.pem()),
        (SERVER_CERT, server.pem()),
        (SERVER_KEY, server_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), contents).expect("write a certificate file");
    }
}
