//! Shared test helpers: a Portcullis server on free loopback ports with its
//! own data directory, the admin CLI against it, and tool checks that fail
//! loudly when a needed program is missing.

#![allow(dead_code, reason = "each test module uses a different subset")]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");
/// Base DN every test server uses.
pub const BASE: &str = "dc=example,dc=org";

/// Panics with an install hint when `tool` is not on PATH (tests never skip).
pub fn require_tool(tool: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false);
    assert!(found, "required tool `{tool}` is not installed; run ./scripts/test (it installs the test dependencies)");
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A running `portcullis serve` with a private data directory.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub ldap_port: u16,
    pub ldaps_port: u16,
    pub http_port: u16,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// The bootstrap admin password printed on first start.
    pub admin_password: String,
}

impl TestServer {
    /// Starts a server with default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `PORTCULLIS_…` environment settings.
    pub fn start_with(extra_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ldap_port = free_port();
        let ldaps_port = free_port();
        let http_port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("PORTCULLIS_HTTP__LISTEN".into(), format!("127.0.0.1:{http_port}")),
            ("PORTCULLIS_HTTP__ISSUER".into(), format!("https://127.0.0.1:{http_port}")),
            ("PORTCULLIS_DATA_DIR".into(), dir.path().join("data").display().to_string()),
            ("PORTCULLIS_LDAP__LISTEN".into(), format!("127.0.0.1:{ldap_port}")),
            ("PORTCULLIS_LDAP__LDAPS_LISTEN".into(), format!("127.0.0.1:{ldaps_port}")),
            ("PORTCULLIS_LOG".into(), "info".into()),
        ];
        env.extend(extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut server =
            TestServer { dir, ldap_port, ldaps_port, http_port, env, child: None, admin_password: String::new() };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let child = Command::new(BIN)
            .arg("serve")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start portcullis");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let http_on = !self.env.iter().any(|(k, v)| k == "PORTCULLIS_HTTP__LISTEN" && v.is_empty());
        let up = |port: u16| TcpStream::connect(("127.0.0.1", port)).is_ok();
        while !up(self.ldap_port) || (http_on && !up(self.http_port)) {
            assert!(Instant::now() < deadline, "server did not start; log:\n{}", self.log());
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("server exited with {status}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.admin_password.is_empty() {
            self.admin_password = self
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("Bootstrap admin password (shown once): ").map(str::to_string))
                .unwrap_or_default();
        }
    }

    /// Stops and starts the server again on the same data and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the server (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id of the server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The generated CA certificate that clients must trust.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir().join("tls").join("ca.pem")
    }

    pub fn ldap_url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap_port)
    }

    /// The OIDC issuer / HTTPS base URL.
    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.http_port)
    }

    pub fn ldaps_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.ldaps_port)
    }

    /// Runs the admin CLI against this server's store.
    pub fn cli_output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run portcullis CLI");
        if let Some(input) = stdin {
            child.stdin.as_mut().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("CLI output")
    }

    /// Runs the admin CLI and asserts success; returns stdout.
    pub fn cli(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.cli_output(args, stdin);
        assert!(
            out.status.success(),
            "portcullis {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the server has picked up every CLI change made so far
    /// (it polls the store every 250 ms and promises changes within 1 s).
    pub fn settle(&self) {
        std::thread::sleep(Duration::from_millis(1000));
    }

    /// Creates a user with a password.
    pub fn add_user(&self, name: &str, password: &str) {
        self.cli(
            &["user", "add", name, "--email", &format!("{name}@example.org"), "--password-stdin"],
            Some(&format!("{password}\n")),
        );
    }

    /// Creates a service account with a password.
    pub fn add_service(&self, name: &str, password: &str) {
        self.cli(&["service-account", "add", name, "--password-stdin"], Some(&format!("{password}\n")));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The DN of a user.
pub fn user_dn(name: &str) -> String {
    format!("uid={name},ou=people,{BASE}")
}

/// The DN of a service account.
pub fn service_dn(name: &str) -> String {
    format!("cn={name},ou=services,{BASE}")
}

/// Runs a command with extra environment; returns its output.
pub fn run(program: &str, args: &[&str], env: &[(&str, &Path)]) -> Output {
    require_tool(program);
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Polls `check` until it returns true or `limit` passes.
pub fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request that reached an [`http_sink`].
pub struct Delivered {
    pub request_line: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Delivered {
    /// A header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
    }
}

/// A stand-in HTTP endpoint (a back-channel logout receiver, an alert
/// webhook): a loopback listener on its own thread that answers every
/// request 200 and hands it to the test. It stops by itself after two
/// minutes or once the test drops the receiver.
pub fn http_sink() -> (u16, std::sync::mpsc::Receiver<Delivered>) {
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in endpoint");
    let port = listener.local_addr().expect("address").port();
    listener.set_nonblocking(true).expect("nonblocking");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while std::time::Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            // Headers, then as much body as Content-Length says (bounded).
            let mut data = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut complete = false;
            while data.len() < 64 * 1024 && !complete {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => data.extend_from_slice(&chunk[..n]),
                }
                let text = String::from_utf8_lossy(&data);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    complete = data.len() >= end + 4 + length;
                }
            }
            let text = String::from_utf8_lossy(&data).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            let request_line = head.lines().next().unwrap_or("").to_string();
            if tx.send(Delivered { request_line, headers, body: body.to_string() }).is_err() {
                break;
            }
        }
    });
    (port, rx)
}
