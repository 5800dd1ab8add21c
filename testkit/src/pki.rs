//! `testkit pki --dir DIR NAME...`: a test certificate authority and one server certificate for
//! NAMEs (DNS names or IP addresses), as PEM files: DIR/ca.pem, DIR/server.pem,
//! DIR/server-key.pem. Fresh keys every run; nothing leaves DIR.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::util::{fail, usage_error};

const USAGE: &str = "usage: testkit pki --dir DIR NAME...";

pub fn main(args: &[String]) -> i32 {
    let (dir, names) = match args {
        [flag, dir, names @ ..] if flag == "--dir" && !names.is_empty() => (dir, names),
        _ => return usage_error(USAGE, "--dir DIR and at least one NAME are needed"),
    };
    match write(dir, names) {
        Ok(()) => 0,
        Err(error) => fail("pki", std::io::Error::other(error)),
    }
}

fn write(dir: &str, names: &[String]) -> Result<(), String> {
    let text = |e: rcgen::Error| e.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(text)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "cordon test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(text)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(text)?;
    let issuer = Issuer::new(ca, ca_key);
    let server = CertificateParams::new(names.to_vec()).map_err(text)?;
    let server_key = KeyPair::generate().map_err(text)?;
    let server_cert = server.signed_by(&server_key, &issuer).map_err(text)?;
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (file, pem) in [
        ("ca.pem", ca_cert.pem()),
        ("server.pem", server_cert.pem()),
        ("server-key.pem", server_key.serialize_pem()),
    ] {
        std::fs::write(dir.join(file), pem).map_err(|e| format!("{file}: {e}"))?;
    }
    Ok(())
}
