//! Support for end-to-end tests: the local control plane (started once per
//! test run), a namespace and client per test, real `baton-controller`
//! processes that can be killed, frozen, thawed and stopped, and waiting
//! with a deadline and a clear message.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where `e2e/cluster` keeps its state: `target/e2e`, or `$BATON_E2E_STATE`
/// (a second cluster beside the first, as `e2e/cluster` honours it too).
pub fn state_dir() -> PathBuf {
    std::env::var_os("BATON_E2E_STATE").map_or_else(|| root().join("target/e2e"), PathBuf::from)
}

/// Brings the local control plane up once per test process (idempotent:
/// reuses a running one) and returns its kubeconfig path.
pub fn kubeconfig() -> &'static Path {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        let status = Command::new(root().join("e2e/cluster")).arg("up").stdout(Stdio::null()).status().expect("run e2e/cluster up");
        assert!(status.success(), "e2e/cluster up failed; see {}/logs/", state_dir().display());
        state_dir().join("kubeconfig")
    })
}

pub async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// A namespace of one test, deleted when the test ends well (kept on
/// failure, to look at).
pub struct TestNs {
    pub name: String,
    pub client: Client,
}

impl TestNs {
    pub async fn new(test: &str) -> TestNs {
        let client = client().await;
        let suffix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() % 100_000;
        let name = format!("e2e-{test}-{suffix}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        // With the real node, ServiceAccount admission is on: no pod is
        // admitted before the namespace's default ServiceAccount exists.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for("the namespace's default ServiceAccount", Duration::from_secs(30), || async {
            accounts.get_opt("default").await.map_err(|e| e.to_string())?.ok_or_else(|| "not yet".to_string())
        })
        .await;
        TestNs { name, client }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Applies YAML documents (like `kubectl apply -f`), in this namespace.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", kubeconfig())
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml));
    }

    /// Starts a controller watching this namespace, holding its Lease here.
    pub fn controller(&self, identity: &str) -> ControllerProc {
        ControllerProc::start(identity, &self.name, &[])
    }

    /// Deletes the namespace (call at the end of a passing test).
    pub async fn done(self) {
        let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.name, &DeleteParams::default()).await;
    }
}

/// The flags that make a controller serve the local control plane's
/// admission webhook (registered by `e2e/cluster up`): the shared port it
/// calls (`WEBHOOK_PORT` in ports.env) and the certificate in pki/webhook.
pub fn webhook_flags() -> Vec<String> {
    kubeconfig();
    let ports = std::fs::read_to_string(state_dir().join("ports.env")).expect("read ports.env");
    let port = ports.lines().find_map(|l| l.strip_prefix("WEBHOOK_PORT=")).filter(|p| !p.is_empty()).expect("WEBHOOK_PORT in ports.env");
    let dir = state_dir().join("pki/webhook");
    vec!["--webhook-addr".into(), format!("127.0.0.1:{port}"), "--webhook-cert-dir".into(), dir.to_string_lossy().into_owned()]
}

/// Whether benchmark `name` on the control plane runs: `cargo test
/// --all-targets` also runs bench targets, and these are only for `cargo
/// bench`, which passes --bench. Says how to run it when it does not.
#[allow(dead_code)] // For the benches that include this file; the e2e tests do not call it.
pub fn run_as_bench(name: &str, target: &str) -> bool {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        println!("benches/{name}: skipped outside `cargo bench` (make {target})");
    }
    bench
}

/// One plain HTTP/1.1 request to a controller's metrics server; the status
/// code and the body.
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the metrics server");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read the response");
    let code = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (code, body)
}

/// The first line containing every one of `needles` in the logs of the
/// controllers that tests started and that wrote in the last two minutes.
/// The admission webhook's port is shared by every controller on this host,
/// so any of them (of this test or another) may have judged a request.
pub fn any_controller_log(needles: &[&str]) -> Option<String> {
    let recent = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::read_dir(state_dir().join("logs"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("controller-"))
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t > recent))
        .find_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            text.lines().find(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string)
        })
}

/// The value of one series (`name{labels}` as printed) on the metrics
/// server at `addr`; 0 when absent.
pub fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let (code, body) = http(addr, "GET", "/metrics", "");
    assert_eq!(code, 200, "GET /metrics on {addr}");
    series_value(&body, series)
}

/// The value of one series (`name{labels}` as printed) in a Prometheus
/// text exposition; 0 when absent.
pub fn series_value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// The requests the controller at `addr` made to the API server, by
/// `verb resource` (its `baton_api_requests_total`).
pub fn requests(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let (_, body) = http(addr, "GET", "/metrics", "");
    body.lines()
        .filter_map(|l| {
            let labels = l.strip_prefix("baton_api_requests_total{")?;
            let (labels, value) = labels.split_once("} ")?;
            let label = |k: &str| labels.split(',').find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"'));
            Some((format!("{} {}", label("verb")?, label("resource")?), value.parse().ok()?))
        })
        .collect()
}

/// Lease timing used by tests: short, so failover tests finish quickly.
pub const LEASE_DURATION: Duration = Duration::from_secs(4);

/// A real `baton-controller` process.
pub struct ControllerProc {
    pub identity: String,
    namespace: String,
    extra: Vec<String>,
    /// Failpoints configured from the start (`FAILPOINTS`).
    failpoints: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// Length of the log when the process was last started: what it logs
    /// since starts there.
    log_start: u64,
}

impl ControllerProc {
    pub fn start(identity: &str, namespace: &str, extra: &[&str]) -> ControllerProc {
        Self::start_with_failpoints(identity, namespace, extra, "")
    }

    /// Starts a controller with failpoints set before it does anything
    /// (`name=action;...`).
    pub fn start_with_failpoints(identity: &str, namespace: &str, extra: &[&str], failpoints: &str) -> ControllerProc {
        let mut p = ControllerProc {
            identity: identity.into(),
            namespace: namespace.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            failpoints: failpoints.into(),
            child: None,
            log: state_dir().join(format!("logs/controller-{namespace}-{identity}.log")),
            log_start: 0,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("open controller log");
        self.log_start = log.metadata().expect("controller log").len();
        let webhook = if self.extra.iter().any(|a| a == "--webhook-addr") { vec![] } else { webhook_flags() };
        let child = Command::new(env!("CARGO_BIN_EXE_baton-controller"))
            .env("KUBECONFIG", kubeconfig())
            .env("RUST_LOG", "info,baton=debug,kube=warn")
            .env("NO_COLOR", "1")
            .env("FAILPOINTS", &self.failpoints)
            .args(["--identity", &self.identity])
            .args(["--namespace", &self.namespace])
            .args(["--lease-namespace", &self.namespace])
            .args(self.default_flag("--lease-duration", &format!("{}s", LEASE_DURATION.as_secs())))
            .args(self.default_flag("--renew-interval", "500ms"))
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(webhook)
            .args(&self.extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start baton-controller");
        self.child = Some(child);
    }

    /// `[flag, value]`, unless the extra flags given at start set it.
    fn default_flag(&self, flag: &str, value: &str) -> Vec<String> {
        if self.extra.iter().any(|a| a == flag) { vec![] } else { vec![flag.to_string(), value.to_string()] }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.pid_number() as i32)
    }

    /// The process id, for reading /proc.
    pub fn pid_number(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn signal(&self, s: Signal) {
        kill(self.pid(), s).expect("signal controller");
    }

    /// kill -9: no cleanup, the Lease is left to expire.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.reap();
    }

    /// SIGSTOP: the process is frozen mid-flight.
    pub fn freeze(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal(Signal::SIGCONT);
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "controller {} did not exit within 30s of SIGTERM", self.identity);
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = None;
    }

    /// Starts the process again with the same identity and flags.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// What the process logged since it was last started.
    pub fn log_since_start(&self) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(log.get(self.log_start as usize..).unwrap_or_default()).into_owned()
    }

    /// Waits until a line logged since the last start contains every one of
    /// `needles`; returns that line.
    pub async fn wait_log(&self, needles: &[&str], timeout: Duration) -> String {
        wait_for(&format!("{:?} in the log of {}", needles, self.identity), timeout, || async {
            let log = self.log_since_start();
            log.lines().find(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string).ok_or_else(|| self.log.display().to_string())
        })
        .await
    }

    /// The address of its metrics server (`--metrics-addr 127.0.0.1:0`), from its log.
    pub async fn metrics_addr(&self) -> std::net::SocketAddr {
        let line = self.wait_log(&["serving /metrics"], Duration::from_secs(30)).await;
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).expect("addr= in the line");
        addr.parse().unwrap_or_else(|e| panic!("metrics address {addr:?}: {e}"))
    }

    /// Configures failpoint `name` with `actions` (`pause`, `off`, ...):
    /// `PUT /failpoints/<name>` (a build with `--features failpoints`).
    pub async fn failpoint(&self, name: &str, actions: &str) {
        let (code, body) = http(self.metrics_addr().await, "PUT", &format!("/failpoints/{name}"), actions);
        assert_eq!(code, 200, "PUT /failpoints/{name} on {}: {body} (was the controller built with --features failpoints?)", self.identity);
    }

    /// Fails the test if the controller's log shows a panic.
    pub fn assert_no_panic(&self) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "controller {} panicked; see {}", self.identity, self.log.display());
    }
}

impl Drop for ControllerProc {
    /// Ends the controller the way a pod ends: SIGTERM, then SIGKILL if it
    /// is still there after 5 s (in the background, so the test goes on).
    /// A SIGKILL at once would reset the admission reviews it was serving on
    /// the webhook port every controller on this host shares, failing pod
    /// creates of other tests.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            });
        }
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming
/// what was awaited and the last state seen.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
