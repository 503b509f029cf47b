//! The hub over TLS signed by a private CA: `control_plane.ca_file` adds
//! the CA to the agent's trust roots (`tasuki doctor` uses the same client
//! set-up as `register` and `agent`). The "hub" is `openssl s_server` on
//! loopback with a certificate made here; certificates stay verified.

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (the TLS tests need it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate for 127.0.0.1 that it signed.
fn make_certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut ca = vec!["req", "-x509", "-nodes", "-days", "2"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=Tasuki test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-nodes"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "hub.key",
        "-out",
        "hub.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("hub.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write the extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "hub.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "hub.ext",
            "-out",
            "hub.pem",
        ],
    );
}

/// `openssl s_server` answering HTTP on a free loopback port.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path) -> TlsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("openssl")
            .args([
                "s_server", "-quiet", "-www", "-cert", "hub.pem", "-key", "hub.key",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s_server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsServer { child, port }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn doctor(config: &Path, extra: &[&str]) -> String {
    let out = tasuki()
        .args(["doctor", "--config"])
        .arg(config)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run tasuki doctor");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_private_ca_in_ca_file_lets_the_agent_verify_the_hubs_certificate() {
    let scratch = Scratch::new();
    let dir = scratch.dir.path();
    make_certificates(dir);
    let server = TlsServer::start(dir);
    let creds = dir.join("credentials.toml");
    std::fs::write(
        &creds,
        "access_key_id = \"TSKTEST\"\nsecret_access_key = \"0123\"\ninstance_id = \"abc\"\n",
    )
    .expect("write credentials");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let config = dir.join("agent.toml");
    let url = format!("https://127.0.0.1:{}", server.port);
    std::fs::write(
        &config,
        format!(
            "[control_plane]\nurl = \"{url}\"\nname = \"tls-robot\"\n[credentials]\nfile = \"credentials.toml\"\n[paths]\nwork_dir = \"work\"\n"
        ),
    )
    .expect("write config");

    // Without the CA: the system's roots do not know it.
    let without = doctor(&config, &[]);
    let hub_line = without
        .lines()
        .find(|l| l.contains("hub: "))
        .unwrap_or_default();
    assert!(
        hub_line.starts_with("FAIL  hub: cannot reach")
            && hub_line.to_lowercase().contains("certificate"),
        "{without}"
    );
    assert!(without.contains("control_plane.ca_file"), "{without}");

    // With it, the handshake succeeds and the hub answers.
    let ca = dir.join("ca.pem");
    let set = format!("control_plane.ca_file={}", ca.display());
    let with = doctor(&config, &["--set", &set]);
    assert!(
        with.contains(&format!("ok    hub: {url} answered in")),
        "{with}"
    );
    assert!(!with.contains("plain http://"), "{with}");
}

/// `http://` to a hub that is not this machine is warned about.
#[test]
fn doctor_warns_about_plain_http_to_another_machine() {
    let scratch = Scratch::new();
    let dir = scratch.dir.path();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "[control_plane]\nurl = \"http://192.0.2.1:9\"\nname = \"far\"\n[credentials]\nfile = \"credentials.toml\"\n",
    )
    .expect("write config");
    let creds = dir.join("credentials.toml");
    std::fs::write(
        &creds,
        "access_key_id = \"TSKTEST\"\nsecret_access_key = \"0123\"\ninstance_id = \"abc\"\n",
    )
    .expect("write credentials");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let out = doctor(&config, &[]);
    assert!(
        out.contains("warn  hub: the hub's URL http://192.0.2.1:9 is plain http://"),
        "{out}"
    );
}
