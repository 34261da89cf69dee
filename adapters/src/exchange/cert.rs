//! A throwaway CA and a `localhost` leaf certificate, generated at every start.
//!
//! Clients trust the exchange through the CA's PEM (`--ca-file`), never by disabling verification:
//! the point of the embedded exchange is to exercise the same verified TLS path as production.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// PEM texts of the generated CA and of the server's leaf certificate and key.
#[derive(Debug, Clone)]
pub struct GeneratedCerts {
    /// The CA certificate: what clients add as a trusted root.
    pub ca_pem: String,
    /// The leaf certificate for `localhost` and 127.0.0.1, signed by the CA.
    pub leaf_pem: String,
    /// The leaf's private key (PKCS#8 PEM).
    pub leaf_key_pem: String,
}

/// Generates a CA named `common_name` and a leaf for `localhost`/127.0.0.1 signed by it.
pub fn generate(common_name: &str) -> Result<GeneratedCerts, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, common_name);
    ca_params.distinguished_name.push(DnType::OrganizationName, "keel embedded exchange");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    leaf_params.distinguished_name.push(DnType::CommonName, "localhost");
    leaf_params.use_authority_key_identifier_extension = true;
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf_params.signed_by(&leaf_key, &issuer)?;

    Ok(GeneratedCerts { ca_pem: ca_cert.pem(), leaf_pem: leaf_cert.pem(), leaf_key_pem: leaf_key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pems_load_into_native_tls() {
        let certs = generate("keel test CA").unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        native_tls::Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap();
        native_tls::Identity::from_pkcs8(certs.leaf_pem.as_bytes(), certs.leaf_key_pem.as_bytes()).unwrap();
        // Two starts never share a CA: a client trusting an old CA must be rejected.
        assert_ne!(generate("keel test CA").unwrap().ca_pem, certs.ca_pem);
    }
}
