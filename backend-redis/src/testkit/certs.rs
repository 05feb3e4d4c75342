//! A throwaway certificate authority and certificates for TLS tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A throwaway certificate authority with a server certificate (for
/// `127.0.0.1` and `localhost`) and a client certificate, made with the
/// `openssl` command-line tool. All files are PEM; keys are unencrypted
/// ECDSA P-256, valid for two days.
#[derive(Clone, Debug)]
pub struct TestCertificates {
    /// The CA certificate: what clients pass as `tls_ca_cert`.
    pub ca_cert: PathBuf,
    /// The server certificate, signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA, for mutual TLS.
    pub client_cert: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
}

impl TestCertificates {
    /// Generates a new CA and certificates into `dir` (created if needed;
    /// existing files are overwritten). Takes well under a second.
    pub fn generate(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let file = |name: &str| dir.join(name);
        let certs = Self {
            ca_cert: file("ca.pem"),
            server_cert: file("server.pem"),
            server_key: file("server.key"),
            client_cert: file("client.pem"),
            client_key: file("client.key"),
        };
        let ca_key = file("ca.key");
        let p = |path: &Path| path.display().to_string();
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=distlock test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&certs.ca_cert),
        ])?;
        for (name, cert, key, ext) in [
            (
                "server",
                &certs.server_cert,
                &certs.server_key,
                "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
            ),
            (
                "client",
                &certs.client_cert,
                &certs.client_key,
                "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
            ),
        ] {
            let csr = file(&format!("{name}.csr"));
            let ext_file = file(&format!("{name}.ext"));
            std::fs::write(&ext_file, ext)
                .map_err(|e| format!("writing {}: {e}", ext_file.display()))?;
            openssl(&[
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-subj", &format!("/CN=distlock test {name}"),
                "-keyout", &p(key), "-out", &p(&csr),
            ])?;
            openssl(&[
                "x509", "-req", "-in", &p(&csr), "-CA", &p(&certs.ca_cert),
                "-CAkey", &p(&ca_key), "-CAcreateserial", "-days", "2",
                "-extfile", &p(&ext_file), "-out", &p(cert),
            ])?;
        }
        Ok(certs)
    }

    /// The `redis-server` arguments that serve TLS with these files;
    /// `require_client_cert` sets `--tls-auth-clients yes` (mutual TLS),
    /// otherwise `no`.
    pub fn server_args(&self, require_client_cert: bool) -> Vec<String> {
        let p = |path: &Path| path.display().to_string();
        vec![
            "--tls-cert-file".into(),
            p(&self.server_cert),
            "--tls-key-file".into(),
            p(&self.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.ca_cert),
            "--tls-auth-clients".into(),
            if require_client_cert { "yes" } else { "no" }.into(),
        ]
    }
}

/// Runs `openssl ARGS`, with its error output in the error.
fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl ({e}); install it (`apt-get install openssl`)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
