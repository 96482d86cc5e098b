//! Credentials of one test cluster: a throw-away CA, the API server's serving certificate for
//! 127.0.0.1, the service-account signing key and an admin bearer token. Made with the
//! `openssl` command line tool; nothing here is reused across clusters.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::binaries::locate;
use super::error::{ClusterError, Result};

/// Paths of the generated credentials (all inside the cluster's work directory).
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate (PEM) that signed the serving certificate.
    pub ca_cert: PathBuf,
    /// API server serving certificate.
    pub server_cert: PathBuf,
    /// API server serving key.
    pub server_key: PathBuf,
    /// Service-account signing key (private).
    pub sa_key: PathBuf,
    /// Service-account verification key (public).
    pub sa_pub: PathBuf,
    /// `--token-auth-file` with one admin user in `system:masters`.
    pub token_file: PathBuf,
    /// The admin bearer token.
    pub admin_token: String,
}

impl Pki {
    /// Generates fresh credentials into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(ClusterError::io(format!("creating {}", dir.display())))?;
        let openssl = locate("openssl")?;
        let path = |name: &str| dir.join(name);
        let run = |command_line: &str| run_openssl(&openssl, dir, command_line);
        let new_ec_key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        run(&format!(
            "req -x509 {new_ec_key} -keyout ca.key -out ca.crt -days 2 -subj /CN=fused-e2e-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        ))?;
        run(&format!(
            "req {new_ec_key} -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver"
        ))?;
        std::fs::write(
            path("apiserver.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n",
        )
        .map_err(ClusterError::io("writing apiserver.ext"))?;
        run(
            "x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
             -out apiserver.crt -days 2 -extfile apiserver.ext",
        )?;
        run("ecparam -name prime256v1 -genkey -noout -out sa.key")?;
        run("ec -in sa.key -pubout -out sa.pub")?;

        let admin_token = random_hex(24)?;
        let token_file = path("tokens.csv");
        std::fs::write(
            &token_file,
            format!("{admin_token},admin,admin,system:masters\n"),
        )
        .map_err(ClusterError::io("writing tokens.csv"))?;
        Ok(Self {
            ca_cert: path("ca.crt"),
            server_cert: path("apiserver.crt"),
            server_key: path("apiserver.key"),
            sa_key: path("sa.key"),
            sa_pub: path("sa.pub"),
            token_file,
            admin_token,
        })
    }
}

/// Runs openssl in `dir` with the whitespace-separated `command_line` (no argument has spaces).
fn run_openssl(openssl: &Path, dir: &Path, command_line: &str) -> Result<()> {
    let output = Command::new(openssl)
        .args(command_line.split_whitespace())
        .current_dir(dir)
        .output()
        .map_err(ClusterError::io("running openssl"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ClusterError::CommandFailed {
            command: format!("openssl {command_line}"),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// `bytes` random bytes from the kernel, hex-encoded.
fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(ClusterError::io("reading /dev/urandom"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
