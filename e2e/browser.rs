//! A headless chromium driven through chromedriver (WebDriver), and
//! `baton ui` to point it at: shared by the UI's end-to-end tests and
//! `make bench-ui`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

use crate::support::wait_for;

/// A child process, in a process group of its own, killed with everything
/// it started (chromedriver's chromium) when the test ends, however it ends.
pub struct Killed(Child);

impl Killed {
    fn spawn(command: &mut Command) -> std::io::Result<Killed> {
        use std::os::unix::process::CommandExt;
        command.process_group(0).spawn().map(Killed)
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `baton ui` with `kubeconfig`, and the URL it printed.
pub fn start_ui(kubeconfig: &std::path::Path, namespace: &str) -> (Killed, String) {
    start_ui_with(kubeconfig, namespace, &[])
}

/// `baton ui ARGS` with `kubeconfig`, and the URL it printed.
pub fn start_ui_with(kubeconfig: &std::path::Path, namespace: &str, args: &[&str]) -> (Killed, String) {
    let mut child = Killed::spawn(
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "-n", namespace, "ui"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("start baton ui");
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url =
        line.split_whitespace().find(|w| w.starts_with("http://127.0.0.1:")).unwrap_or_else(|| panic!("no URL in {line:?}")).to_string();
    (child, url)
}

/// A headless chromium session through a chromedriver of its own.
pub async fn browser() -> (Killed, Client) {
    let port = free_port();
    let driver = Killed::spawn(Command::new("chromedriver").arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()))
        .expect("chromedriver (make test installs Debian's chromium-driver)");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    let client = wait_for("chromedriver to start a session", Duration::from_secs(30), || {
        let caps = caps.clone();
        async move {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            ClientBuilder::new(connector).capabilities(caps).connect(&format!("http://127.0.0.1:{port}")).await.map_err(|e| e.to_string())
        }
    })
    .await;
    (driver, client)
}

/// Layers of [`start_big_run`]'s workflow.
pub const BIG_LAYERS: usize = 20;
/// Tasks in each layer of [`start_big_run`]'s workflow.
pub const BIG_WIDTH: usize = 50;

/// Starts run `big-1` of workflow `big`: BIG_LAYERS × BIG_WIDTH tasks,
/// `t{layer}-{i}`, each after two of the layer before (`i` and `i + 1`),
/// whose pods run for 10 minutes, 10 at a time; returns once a controller
/// has taken it up (its graph can be drawn).
pub async fn start_big_run(ns: &crate::support::TestNs) {
    let mut tasks = String::new();
    for l in 0..BIG_LAYERS {
        for i in 0..BIG_WIDTH {
            let deps = if l == 0 { String::new() } else { format!("t{}-{i}, t{}-{}", l - 1, l - 1, (i + 1) % BIG_WIDTH) };
            tasks.push_str(&format!(
                "    - name: t{l}-{i}\n      dependsOn: [{deps}]\n      container: {{name: main, image: busybox, command: [sh, -c, 'exit 0']}}\n\
                 \x20     podTemplate: {{metadata: {{annotations: {{baton.dev/sim-duration: 600s}}}}}}\n"
            ));
        }
    }
    ns.apply(&format!(
        "apiVersion: baton.dev/v1alpha1\nkind: Workflow\nmetadata: {{name: big}}\nspec:\n  parallelism: 10\n  tasks:\n{tasks}"
    ));
    ns.apply("apiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {name: big-1}\nspec: {workflowRef: {name: big}}\n");
    let runs: kube::Api<baton::api::WorkflowInstance> = ns.api();
    wait_for("the run of 1,000 tasks to start", Duration::from_secs(120), || async {
        let run = runs.get("big-1").await.map_err(|e| e.to_string())?;
        run.status.and_then(|s| s.workflow_spec).map(|_| ()).ok_or_else(|| "not started".to_string())
    })
    .await;
}
