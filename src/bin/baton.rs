//! The `baton` command line. Follows kubectl's conventions: exit code 0 only
//! on success, errors on stderr in one line that says what to do.

use std::process::ExitCode;
use std::sync::Arc;

use baton::api::{RunPhase, WorkflowInstance};
use baton::steer::{self, Outcome, Request};
use baton::view::{self, PodLog, Style};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;

#[derive(Parser)]
#[command(name = "baton", version, about = "Work with baton workflows and runs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Namespace (default: the kubeconfig context's, else "default").
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Path of the kubeconfig (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Check Workflow and WorkflowInstance manifests offline, with the same
    /// checks the controller makes. Prints one line per problem; exits 1 if
    /// there is any.
    Validate {
        /// Manifest files (YAML, several documents allowed); `-` reads stdin.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Start a run of WORKFLOW and print its name. With --name, submitting
    /// again returns the existing run instead of creating a second one.
    Submit {
        /// The Workflow to run.
        workflow: String,
        /// A parameter value, NAME=VALUE; repeat for several.
        #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Name of the run (idempotent: an existing run of the same workflow is returned).
        #[arg(long, conflicts_with = "generate_name")]
        name: Option<String>,
        /// Let the API server pick a unique name from "WORKFLOW-" (the default).
        #[arg(long)]
        generate_name: bool,
        /// Follow the run to its end; exit non-zero unless it Succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// List runs, newest first: phase, progress, owner, age, duration.
    #[command(alias = "ls")]
    List {
        /// Runs of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format: wide (adds epoch, start, message), json or yaml.
        #[arg(short = 'o', long, value_enum)]
        output: Option<ListOutput>,
    },
    /// Show a run: its tasks as a tree in topological order (phase,
    /// attempts, duration, pod or child run, exit code, result or message),
    /// then its owner and owner history.
    Get {
        run: String,
        /// Print the run object instead, as json or yaml.
        #[arg(short = 'o', long, value_enum)]
        output: Option<ObjectOutput>,
    },
    /// Show a run as `get` does and keep it current until the run ends (on a
    /// terminal, redrawn in place; otherwise a line per change). Exits 0 if
    /// the run Succeeded, 1 if it ended otherwise.
    Watch { run: String },
    /// Print the logs of a run's task pods (every task's latest attempt, each
    /// line prefixed with its task, or one TASK's).
    Logs {
        run: String,
        /// A task, or one instance of a fanned-out task (`TASK(INDEX)`).
        task: Option<String>,
        /// Follow the run until it ends: running pods, and the pods of
        /// tasks (and retries) that start later.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Attempt to show, 0 for the first (default: the latest).
        #[arg(long)]
        attempt: Option<i32>,
    },
    /// Pause a run: no new task starts; running ones finish (spec.suspend=true).
    Pause { run: String },
    /// Resume a paused run (spec.suspend=false).
    Resume { run: String },
    /// Stop a run: running task pods are deleted, exit tasks run (spec.shutdown=Stop).
    Stop { run: String },
    /// Stop a run without running its exit tasks (spec.shutdown=Terminate).
    Terminate { run: String },
    /// Re-run the failed and stopped tasks of a finished run (spec.retryFailed
    /// plus one; a Stop or Terminate request is cleared with it).
    Retry { run: String },
    /// Serve the web UI on 127.0.0.1 through your kubeconfig (like kubectl
    /// proxy: it can do what you may do) until interrupted. Prints the URL;
    /// opens nothing.
    Ui {
        /// Port to listen on (default: a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ListOutput {
    Wide,
    Json,
    Yaml,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ObjectOutput {
    Json,
    Yaml,
}

/// A failure of a command: printed on one line, with what to do.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// The connection a command works through, and what its errors name.
struct Session {
    client: kube::Client,
    namespace: String,
    server: String,
}

impl Session {
    fn runs(&self) -> Api<WorkflowInstance> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A one-line failure for an API error, saying what to do.
    fn failure(&self, e: kube::Error) -> Failure {
        match e {
            kube::Error::Api(s) if s.code == 403 => {
                Failure(format!("{}: ask a cluster administrator for that permission (RBAC)", s.message))
            }
            kube::Error::Api(s) if s.code == 401 => Failure(format!(
                "the API server at {} refused the credentials ({}); check the user of your kubeconfig context",
                self.server, s.message
            )),
            kube::Error::Api(s) if s.code == 404 && s.message.contains("the server could not find the requested resource") => {
                Failure(format!(
                    "the API server at {} has no WorkflowInstance resource: install baton's CRDs (kubectl apply -f crds/)",
                    self.server
                ))
            }
            kube::Error::Api(s) => Failure(format!("the API server refused: {} ({})", s.message, s.code)),
            other => Failure(format!(
                "cannot reach the API server at {}: {}; check that the cluster is up and that --kubeconfig/--context point at it",
                self.server,
                chain(&other)
            )),
        }
    }

    /// The run, or a failure naming it when it does not exist.
    async fn run(&self, name: &str) -> Result<WorkflowInstance, Failure> {
        match self.runs().get(name).await {
            Ok(run) => Ok(run),
            // A 404 naming no object: the API server has no such resource.
            Err(kube::Error::Api(s)) if s.code == 404 && !s.message.contains("the server could not find the requested resource") => {
                Err(Failure(format!(
                    "run {name:?} not found in namespace {}; check the name or pass -n (baton list -A shows every run)",
                    self.namespace
                )))
            }
            Err(e) => Err(self.failure(e)),
        }
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

async fn session(cli: &Cli) -> Result<Session, Failure> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Failure(format!("cannot read kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| match e {
        kube::config::KubeconfigError::LoadContext(context) => {
            Failure(format!("the kubeconfig has no context {context:?}; kubectl config get-contexts lists those it has"))
        }
        e => Failure(format!("no usable kubeconfig ({e}); set KUBECONFIG or pass --kubeconfig")),
    })?;
    let namespace = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let server = config.cluster_url.to_string();
    Ok(Session { client: kube::Client::try_from(config)?, namespace, server })
}

async fn submit(cli: &Cli, workflow: &str, params: &[String], name: Option<&str>, wait: bool) -> Result<ExitCode, Failure> {
    use baton::api::{Workflow, WorkflowInstanceSpec, WorkflowRef};
    use kube::api::PostParams;
    let session = session(cli).await?;
    let (client, ns) = (session.client.clone(), session.namespace.clone());
    let mut values = std::collections::BTreeMap::new();
    for p in params {
        let (k, v) = p.split_once('=').ok_or_else(|| Failure(format!("parameter {p:?} is not NAME=VALUE")))?;
        values.insert(k.to_string(), v.to_string());
    }
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    let wf = workflows
        .get_opt(workflow)
        .await
        .map_err(|e| session.failure(e))?
        .ok_or_else(|| Failure(format!("workflow {workflow:?} not found in namespace {ns}; check the name or pass -n")))?;
    if let Err(problems) = baton::dag::resolve_params(&wf.spec, &values) {
        return Err(Failure(format!("{}; fix the -p values", baton::dag::summarize(&problems))));
    }
    let mut run = WorkflowInstance::new(
        name.unwrap_or_default(),
        WorkflowInstanceSpec { workflow_ref: WorkflowRef { name: workflow.into() }, params: values, ..Default::default() },
    );
    if name.is_none() {
        run.metadata.name = None;
        run.metadata.generate_name = Some(format!("{workflow}-"));
    }
    let runs: Api<WorkflowInstance> = Api::namespaced(client, &ns);
    let created = match runs.create(&PostParams::default(), &run).await {
        Ok(r) => r,
        Err(kube::Error::Api(s)) if s.code == 409 && name.is_some() => {
            let existing = runs.get(name.unwrap_or_default()).await.map_err(|e| session.failure(e))?;
            if existing.spec.workflow_ref.name != workflow {
                return Err(Failure(format!(
                    "run {} already exists and runs workflow {}; choose another --name",
                    existing.metadata.name.unwrap_or_default(),
                    existing.spec.workflow_ref.name
                )));
            }
            existing
        }
        Err(e) => return Err(session.failure(e)),
    };
    let run_name = created.metadata.name.clone().unwrap_or_default();
    println!("{run_name}");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let done =
        kube::runtime::wait::await_condition(runs, &run_name, |r: Option<&WorkflowInstance>| r.and_then(view::ended).is_some()).await?;
    match done {
        Some(run) => Ok(ended(&run)),
        None => {
            eprintln!("run {run_name} ended Unknown");
            Ok(ExitCode::from(1))
        }
    }
}

/// Colour only on a terminal, and never with `NO_COLOR` set.
fn style() -> Style {
    use std::io::IsTerminal;
    Style { color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
}

fn print_object<T: serde::Serialize>(value: &T, yaml: bool) -> Result<(), Failure> {
    if yaml {
        emit(&serde_yaml::to_string(value)?);
    } else {
        emit(&format!("{}\n", serde_json::to_string_pretty(value)?));
    }
    Ok(())
}

async fn list(cli: &Cli, all_namespaces: bool, output: Option<ListOutput>) -> Result<ExitCode, Failure> {
    let session = session(cli).await?;
    let api: Api<WorkflowInstance> = if all_namespaces { Api::all(session.client.clone()) } else { session.runs() };
    let mut runs = api.list(&Default::default()).await.map_err(|e| session.failure(e))?.items;
    // As kubectl prints them: without managedFields.
    runs.iter_mut().for_each(|r| r.metadata.managed_fields = None);
    match output {
        Some(ListOutput::Json | ListOutput::Yaml) => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": runs});
            print_object(&list, matches!(output, Some(ListOutput::Yaml)))?;
        }
        _ if runs.is_empty() => {
            let scope = if all_namespaces { "any namespace".to_string() } else { format!("namespace {}", session.namespace) };
            eprintln!("No runs found in {scope}.");
        }
        _ => emit(&view::list(&runs, all_namespaces, matches!(output, Some(ListOutput::Wide)), Timestamp::now(), style())),
    }
    Ok(ExitCode::SUCCESS)
}

async fn get(cli: &Cli, name: &str, output: Option<ObjectOutput>) -> Result<ExitCode, Failure> {
    let session = session(cli).await?;
    let mut run = session.run(name).await?;
    run.metadata.managed_fields = None;
    match output {
        Some(o) => print_object(&run, matches!(o, ObjectOutput::Yaml))?,
        None => emit(&view::run(&run, Timestamp::now(), style())),
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit code of a command that followed a run to its end.
fn ended(run: &WorkflowInstance) -> ExitCode {
    let phase = run.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
    eprintln!("run {} ended {}", run.metadata.name.as_deref().unwrap_or_default(), phase.as_str());
    if phase == RunPhase::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

async fn watch(cli: &Cli, name: &str) -> Result<ExitCode, Failure> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use std::io::{IsTerminal, Write};
    let session = session(cli).await?;
    let first = session.run(name).await?;
    let terminal = std::io::stdout().is_terminal();
    let style = style();
    let mut last: Option<WorkflowInstance> = None;
    let show = |run: &WorkflowInstance, last: &mut Option<WorkflowInstance>| {
        let mut out = std::io::stdout().lock();
        if terminal {
            let _ = write!(out, "\x1b[H\x1b[2J{}", view::run(run, Timestamp::now(), style));
        } else {
            let stamp = Timestamp::now().strftime("%H:%M:%S");
            for line in view::changes(last.as_ref(), run) {
                let _ = writeln!(out, "{stamp} {line}");
            }
        }
        let _ = out.flush();
        *last = Some(run.clone());
    };
    show(&first, &mut last);
    if view::ended(&first).is_some() {
        return Ok(ended(&first));
    }
    let mut events = watcher::watch_object(session.runs(), name).default_backoff().boxed();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(Some(run))) => {
                    if run.metadata.uid != first.metadata.uid {
                        return Err(Failure(format!("run {name} was deleted and created again; run baton watch again for the new one")));
                    }
                    show(&run, &mut last);
                    if view::ended(&run).is_some() {
                        return Ok(ended(&run));
                    }
                }
                Some(Ok(None)) => return Err(Failure(format!("run {name} was deleted while being watched"))),
                Some(Err(e)) => match refusal(e, &[401, 403, 404]) {
                    Ok(e) => return Err(session.failure(e)),
                    Err(e) if !terminal => eprintln!("watch of run {name} interrupted ({e}); resuming"),
                    Err(_) => {}
                },
                None => return Err(Failure(format!("the watch of run {name} ended; run baton watch again"))),
            },
            _ = tick.tick(), if terminal => {
                if let Some(run) = last.clone() {
                    show(&run, &mut last);
                }
            }
        }
    }
}

/// The API server's refusal to list or watch, if its code is one of
/// `codes`: refusals do not pass by themselves, so they end the command
/// with what to do; other watch errors are retried.
fn refusal(e: kube::runtime::watcher::Error, codes: &[u16]) -> Result<kube::Error, kube::runtime::watcher::Error> {
    use kube::runtime::watcher::Error::{InitialListFailed, WatchStartFailed};
    match e {
        InitialListFailed(e) | WatchStartFailed(e) if matches!(&e, kube::Error::Api(s) if codes.contains(&s.code)) => Ok(e),
        e => Err(e),
    }
}

/// The pods `baton logs` reads: (what prefixes their lines, pod name);
/// none while no task has started one. Following, a task that has not
/// reached `attempt` yet is waited for rather than refused.
fn log_targets(run: &WorkflowInstance, task: Option<&str>, attempt: Option<i32>, follow: bool) -> Result<Vec<(String, String)>, Failure> {
    let name = run.metadata.name.as_deref().unwrap_or_default();
    let rows = view::rows(run);
    let picked = view::picked(&rows, task);
    // Before a controller took the run up, its tasks are not known yet.
    let started = run.status.as_ref().is_some_and(|s| s.workflow_spec.is_some());
    if let Some(t) = task
        && picked.is_empty()
        && started
    {
        let names: Vec<&str> = rows.iter().map(|r| r.key.as_str()).filter(|k| baton::naming::parse_instance_key(k).is_none()).collect();
        return Err(Failure(format!("run {name} has no task {t:?}; its tasks are: {}", names.join(", "))));
    }
    let mut targets = vec![];
    for row in &picked {
        let Some(entry) = row.entry else { continue };
        if let Some(child) = &entry.child_instance {
            if task.is_some() {
                return Err(Failure(format!("task {} runs child run {child}, not a pod; see baton logs {child}", entry.name)));
            }
            continue;
        }
        if entry.attempts == 0 {
            continue;
        }
        if let Some(a) = attempt
            && (a < 0 || a >= entry.attempts)
        {
            if follow && a >= 0 {
                continue;
            }
            return Err(Failure(format!("task {} has attempts 0 to {}; pick one of them with --attempt", entry.name, entry.attempts - 1)));
        }
        targets.push((entry.name.clone(), view::pod_of(name, entry, attempt)));
    }
    Ok(targets)
}

/// Most pods `baton logs -f` reads at once (kubectl's --max-log-requests);
/// more running than that when it starts is refused, later ones wait.
const MAX_FOLLOWED: usize = 10;

type Lines = tokio::sync::mpsc::UnboundedSender<Result<String, Failure>>;

/// Log requests for the task's own container, by name: injected sidecars
/// make a pod's log ambiguous otherwise.
fn log_params(pod: &Pod, follow: bool) -> kube::api::LogParams {
    kube::api::LogParams {
        follow,
        container: pod.spec.as_ref().and_then(|s| s.containers.first()).map(|c| c.name.clone()),
        ..Default::default()
    }
}

/// A log request the API server refused, on one line.
fn log_refused(session: &Session, key: &str, pod: &str, e: kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) if s.code == 400 => Failure(format!("{key}: {}", s.message)),
        kube::Error::Api(s) if s.code >= 500 => Failure(format!(
            "{key}: the API server could not fetch the log of pod {pod} from its node ({}); check that the node is up",
            s.message
        )),
        e => session.failure(e),
    }
}

/// Sends each line of `stream` to `lines` after `label`, up to its end. A
/// followed log ends when the stream does, as a kubelet closes it once the
/// container has ended; or, since a simulated node never does, once
/// `ended` is done and the stream has been quiet for a second. What is
/// left at the end (a last line with no newline) is sent as it is.
async fn pump(stream: impl futures::AsyncBufRead, ended: Option<impl std::future::Future<Output = ()>>, label: &str, lines: &Lines) {
    use futures::AsyncBufReadExt;
    let mut stream = std::pin::pin!(stream);
    let followed = ended.is_some();
    let mut ended = std::pin::pin!(async move {
        match ended {
            Some(ended) => ended.await,
            None => std::future::pending().await,
        }
    });
    let mut finished = false;
    let mut line = Vec::new();
    let send = |line: &mut Vec<u8>| {
        if !line.is_empty() {
            drop(lines.send(Ok(format!("{label}{}", String::from_utf8_lossy(line).trim_end_matches(['\n', '\r'])))));
            line.clear();
        }
    };
    loop {
        let quiet = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::select! {
            read = stream.read_until(b'\n', &mut line) => match read {
                Ok(0) => return send(&mut line),
                Ok(_) if line.ends_with(b"\n") => send(&mut line),
                Ok(_) => {}
                Err(e) => {
                    send(&mut line);
                    return drop(lines.send(Err(Failure(format!("{label}the log stream broke ({e}); run baton logs again")))));
                }
            },
            _ = &mut ended, if followed && !finished => finished = true,
            _ = quiet, if finished => return send(&mut line),
        }
    }
}

/// Reads `pod`'s log into `lines`, each line after `label`: whole if the
/// pod has ended, else followed until it ends. One of at most MAX_FOLLOWED
/// at a time.
async fn read_log(session: Arc<Session>, pod: Pod, key: String, label: String, lines: Lines, permits: Arc<tokio::sync::Semaphore>) {
    let Ok(_permit) = permits.acquire_owned().await else { return };
    let pods: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let followed = !pod_finished(&pod);
    let stream = match pods.log_stream(&name, &log_params(&pod, followed)).await {
        Ok(stream) => stream,
        Err(kube::Error::Api(s)) if s.code == 404 => return eprintln!("{key}: pod {name} was deleted before its log could be read"),
        Err(e) => return drop(lines.send(Err(log_refused(&session, &key, &name, e)))),
    };
    // Polled, as a simulated node never says: ended, gone, or made again.
    let ended = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            match pods.get_opt(&name).await {
                Ok(Some(p))
                    if p.metadata.uid == pod.metadata.uid
                        && p.metadata.deletion_timestamp.is_none()
                        && view::pod_log(&p) == PodLog::Live => {}
                Err(_) => {}
                _ => break,
            }
        }
    };
    pump(stream, followed.then_some(ended), &label, &lines).await;
}

async fn logs(cli: &Cli, name: &str, task: Option<&str>, follow: bool, attempt: Option<i32>) -> Result<ExitCode, Failure> {
    use futures::AsyncReadExt;
    let session = Arc::new(session(cli).await?);
    let run = session.run(name).await?;
    let uid = run.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    let targets = log_targets(&run, task, attempt, follow)?;
    // Lines carry their task unless one task's one pod is asked for (a
    // fanned-out task's instances may be one now and more later).
    let fans_out = |t: &str| {
        let spec = run.status.as_ref().and_then(|s| s.workflow_spec.as_ref());
        spec.and_then(|w| w.task(t)).is_some_and(|x| x.fans_out())
    };
    let prefix = targets.len() > 1 || task.is_none_or(fans_out);
    let label = move |key: &str| if prefix { format!("{key}: ") } else { String::new() };
    if follow {
        return follow_logs(session, run, task, attempt, label).await;
    }
    if targets.is_empty() {
        return Err(Failure(match task {
            Some(t) => format!(
                "task {t} of run {name} has not started a pod yet; baton logs -f waits for it, baton watch {name} shows when it does"
            ),
            None => format!("run {name} has not started a task pod yet; baton logs -f waits for it"),
        }));
    }
    // Of several pods, one with nothing to read is a note on stderr and the
    // others are read; of one, it is the answer.
    let single = targets.len() == 1;
    let lacking = |why: String| {
        if single {
            return Err(Failure(why));
        }
        eprintln!("{why}");
        Ok(())
    };
    let mut readable = vec![];
    for (key, pod) in targets {
        match pods.get_opt(&pod).await.map_err(|e| session.failure(e))? {
            Some(p) if baton::objects::controlled_by(&p.metadata, &uid) => match view::pod_log(&p) {
                PodLog::Live | PodLog::Ended => readable.push((key, p)),
                PodLog::NotYet => lacking(format!("{key}: pod {pod} has not started yet; baton logs -f waits for it"))?,
                PodLog::Never(why) => lacking(format!("{key}: pod {pod} has no log: {why}"))?,
            },
            Some(_) => {
                return Err(Failure(format!(
                    "pod {pod} is not run {name}'s (its controller is another object, so its name collided); baton get {name} shows the task's message"
                )));
            }
            None if single && task.is_some() => {
                return Err(Failure(format!(
                    "pod {pod} of task {key} does not exist: not created yet, or deleted (podGC or by hand); baton get {name} shows its exit code and message"
                )));
            }
            None => eprintln!("{key}: pod {pod} does not exist (not created yet, or deleted)"),
        }
    }
    if readable.is_empty() {
        return Err(Failure(format!("no pod of run {name} is left to read; baton get {name} shows each task's exit code and message")));
    }
    // Read whole, one after another, in the tree's order.
    for (key, pod) in &readable {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let mut bytes = Vec::new();
        let mut stream = pods.log_stream(&pod_name, &log_params(pod, false)).await.map_err(|e| log_refused(&session, key, &pod_name, e))?;
        stream.read_to_end(&mut bytes).await.map_err(|e| Failure(format!("{key}: the log stream broke ({e}); run baton logs again")))?;
        for line in String::from_utf8_lossy(&bytes).lines() {
            emit(&format!("{}{line}\n", label(key)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton logs -f`: the logs of the run's task pods, each once its
/// container has started, as a watch of the run and a watch of its pods
/// show them: the pods there now and those that come later (new tasks,
/// retries, a pod made again under its name). Ends when the run has ended
/// (with --attempt, once that attempt is over) and every log is read; a
/// pod with no log to read is a note on stderr.
async fn follow_logs(
    session: Arc<Session>,
    first: WorkflowInstance,
    task: Option<&str>,
    attempt: Option<i32>,
    label: impl Fn(&str) -> String,
) -> Result<ExitCode, Failure> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use std::collections::HashMap;
    let name = first.metadata.name.clone().unwrap_or_default();
    let uid = first.metadata.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(session.client.clone(), &session.namespace);
    let selector = format!("{}={}", baton::objects::LABEL_INSTANCE, baton::naming::label_value(&name));
    let mut pod_events = watcher(pods.clone(), watcher::Config::default().labels(&selector)).default_backoff().boxed();
    let mut run_events = watcher::watch_object(session.runs(), &name).default_backoff().boxed();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Result<String, Failure>>();
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_FOLLOWED));
    let mut run = first;
    // The run's pods as the watch has them, by name; a relist is gathered
    // apart, so a pod that went meanwhile is known to have gone.
    let (mut known, mut relist): (HashMap<String, Pod>, Option<HashMap<String, Pod>>) = (HashMap::new(), None);
    let mut synced = false;
    // Pods wanted (name → task key): once wanted, until read or reported,
    // so an attempt is not lost when the run moves on to the next.
    let mut wanted: HashMap<String, String> = HashMap::new();
    let mut handled = Handled::default();
    let mut failed: Option<Failure> = None;
    // What to do with a wanted pod: read it, or say why there is nothing.
    let consider = |key: &str, pod: &Pod, last_look: bool, handled: &mut Handled| {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        if handled.has(pod) {
            return;
        }
        if !baton::objects::controlled_by(&pod.metadata, &uid) {
            handled.add(pod);
            return eprintln!("{key}: pod {pod_name} is not run {name}'s (its name collided); baton get {name} shows the task's message");
        }
        match view::pod_log(pod) {
            PodLog::NotYet if !last_look => {}
            PodLog::NotYet => {
                handled.add(pod);
                eprintln!("{key}: pod {pod_name} never started, so it has no log");
            }
            PodLog::Never(why) => {
                handled.add(pod);
                eprintln!("{key}: pod {pod_name} has no log: {why}");
            }
            PodLog::Live | PodLog::Ended => {
                handled.add(pod);
                tokio::spawn(read_log(session.clone(), pod.clone(), key.to_string(), label(key), tx.clone(), permits.clone()));
            }
        }
    };
    // What changed since the last look: the run (so what is wanted), or
    // one pod.
    let (mut run_changed, mut pod_changed): (bool, Option<String>) = (true, None);
    loop {
        if run_changed {
            for (key, pod) in log_targets(&run, task, attempt, true).unwrap_or_default() {
                wanted.entry(pod).or_insert(key);
            }
            if view::ended(&run).is_some() || attempt.is_some_and(|n| view::attempt_over(&run, task, n)) {
                break;
            }
        }
        if synced {
            let look: Vec<&String> = if run_changed { wanted.keys().collect() } else { pod_changed.iter().collect() };
            for pod_name in look {
                if let (Some(key), Some(pod)) = (wanted.get(pod_name), known.get(pod_name)) {
                    consider(key, pod, false, &mut handled);
                }
            }
        }
        (run_changed, pod_changed) = (false, None);
        tokio::select! {
            event = run_events.next() => match event {
                Some(Ok(Some(r))) if r.metadata.uid.as_deref() == Some(uid.as_str()) => (run, run_changed) = (r, true),
                Some(Ok(_)) | None => {
                    failed = Some(Failure(format!("run {name} was deleted (or made again) while its logs were followed")));
                    break;
                }
                Some(Err(e)) => {
                    if let Ok(e) = refusal(e, &[401, 403, 404]) {
                        return Err(session.failure(e));
                    }
                }
            },
            event = pod_events.next() => match event {
                Some(Ok(watcher::Event::Init)) => relist = Some(HashMap::new()),
                Some(Ok(watcher::Event::InitApply(p))) => {
                    relist.get_or_insert_with(HashMap::new).insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    let now = relist.take().unwrap_or_default();
                    for (gone, pod) in known.drain().filter(|(n, _)| !now.contains_key(n)) {
                        if let Some(key) = wanted.get(&gone).filter(|_| !handled.has(&pod)) {
                            handled.add(&pod);
                            eprintln!("{key}: pod {gone} went while the watch of the pods was interrupted; if it ran, its log went with it");
                        }
                    }
                    known = now;
                    // Everything is looked at again.
                    run_changed = true;
                    if !synced {
                        synced = true;
                        let live = wanted.keys().filter(|n| known.get(*n).is_some_and(|p| view::pod_log(p) == PodLog::Live)).count();
                        if live > MAX_FOLLOWED {
                            return Err(Failure(format!(
                                "{live} pods of run {name} are running, more than the {MAX_FOLLOWED} that -f follows at once; name a TASK"
                            )));
                        }
                    }
                }
                Some(Ok(watcher::Event::Apply(p))) => {
                    let changed = p.metadata.name.clone().unwrap_or_default();
                    known.insert(changed.clone(), p);
                    pod_changed = Some(changed);
                }
                // Its last state says whether a log went with it.
                Some(Ok(watcher::Event::Delete(p))) => {
                    let gone = p.metadata.name.clone().unwrap_or_default();
                    known.remove(&gone);
                    if let Some(key) = wanted.get(&gone) {
                        let lost = !handled.has(&p) && matches!(view::pod_log(&p), PodLog::Live | PodLog::Ended);
                        if lost && baton::objects::controlled_by(&p.metadata, &uid) {
                            handled.add(&p);
                            eprintln!("{key}: pod {gone} was deleted before its log could be read");
                        } else {
                            consider(key, &p, true, &mut handled);
                        }
                    }
                }
                Some(Err(e)) => {
                    if let Ok(e) = refusal(e, &[401, 403]) {
                        return Err(session.failure(e));
                    }
                }
                None => {}
            },
            Some(line) = rx.recv() => said(line, &mut failed),
        }
    }
    // The run (or the attempt) is over: a pod the watch has not caught up
    // with is looked at once more, as the API server has it now.
    for (pod_name, key) in &wanted {
        match pods.get_opt(pod_name).await {
            Ok(Some(pod)) => consider(key, &pod, true, &mut handled),
            Ok(None) if !handled.names.contains(pod_name) => {
                eprintln!("{key}: pod {pod_name} does not exist: never created, or deleted before its log could be read");
            }
            Ok(None) => {}
            Err(e) => {
                failed.get_or_insert(session.failure(e));
            }
        }
    }
    if wanted.is_empty() {
        eprintln!("run {name} started no task pod{}", task.map(|t| format!(" for {t}")).unwrap_or_default());
    }
    drop(tx);
    while let Some(line) = rx.recv().await {
        said(line, &mut failed);
    }
    failed.map_or(Ok(ExitCode::SUCCESS), Err)
}

/// What a log reader sent: a line is printed, a failure kept (the first).
fn said(line: Result<String, Failure>, failed: &mut Option<Failure>) {
    match line {
        Ok(l) => emit(&format!("{l}\n")),
        Err(f) => {
            failed.get_or_insert(f);
        }
    }
}

/// The pods `baton logs -f` has read or said why it could not, by UID (a
/// pod made again under its name is another) and by name.
#[derive(Default)]
struct Handled {
    uids: std::collections::HashSet<String>,
    names: std::collections::HashSet<String>,
}

impl Handled {
    fn has(&self, pod: &Pod) -> bool {
        pod.metadata.uid.as_ref().is_some_and(|u| self.uids.contains(u))
    }

    fn add(&mut self, pod: &Pod) {
        self.uids.extend(pod.metadata.uid.clone());
        self.names.extend(pod.metadata.name.clone());
    }
}

/// Writes to stdout; a reader that went away (`| head`) ends the command
/// quietly instead of a panic.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

fn pod_finished(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// A request on a run: a merge patch of its spec (src/steer.rs decides).
async fn request(cli: &Cli, name: &str, what: Request) -> Result<ExitCode, Failure> {
    let session = session(cli).await?;
    session.run(name).await?;
    match steer::send(&session.runs(), name, what).await.map_err(|e| session.failure(e))? {
        Outcome::Requested(message) | Outcome::Nothing(message) => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Refused(message) => Err(Failure(message)),
    }
}

async fn ui(cli: &Cli, port: u16) -> Result<ExitCode, Failure> {
    let session = session(cli).await?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (url, server) = baton::ui::serve(addr, session.client.clone(), session.namespace.clone())
        .await
        .map_err(|e| Failure(format!("cannot listen on {addr}: {e}; pick another --port")))?;
    println!("baton ui: {url} (API server {}, as your kubeconfig's user; open it in one browser; Ctrl-C stops it)", session.server);
    tokio::select! {
        served = server => served.map_err(|e| Failure(format!("the UI server stopped: {e}")))?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &str) -> std::io::Result<String> {
    if path == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) }
}

fn validate(paths: &[String]) -> ExitCode {
    let mut files = Vec::new();
    for path in paths {
        match read(path) {
            Ok(text) => files.push((path.clone(), text)),
            Err(e) => {
                eprintln!("error: cannot read {path}: {e}; check the path");
                return ExitCode::from(2);
            }
        }
    }
    let (findings, skipped) = baton::manifests::validate(&files);
    for s in &skipped {
        eprintln!("skipped {s}");
    }
    for f in &findings {
        println!("{f}");
    }
    if findings.is_empty() {
        eprintln!("{} file(s) valid", files.len());
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Validate { files } => Ok(validate(files)),
        Command::Submit { workflow, params, name, generate_name: _, wait } => submit(&cli, workflow, params, name.as_deref(), *wait).await,
        Command::List { all_namespaces, output } => list(&cli, *all_namespaces, *output).await,
        Command::Get { run, output } => get(&cli, run, *output).await,
        Command::Watch { run } => watch(&cli, run).await,
        Command::Logs { run, task, follow, attempt } => logs(&cli, run, task.as_deref(), *follow, *attempt).await,
        Command::Pause { run } => request(&cli, run, Request::Pause).await,
        Command::Resume { run } => request(&cli, run, Request::Resume).await,
        Command::Stop { run } => request(&cli, run, Request::Stop).await,
        Command::Terminate { run } => request(&cli, run, Request::Terminate).await,
        Command::Retry { run } => request(&cli, run, Request::Retry).await,
        Command::Ui { port } => ui(&cli, *port).await,
    };
    result.unwrap_or_else(|Failure(message)| {
        // One line, whatever an API server or webhook put in its message.
        eprintln!("error: {}", message.split_whitespace().collect::<Vec<_>>().join(" "));
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{StreamExt, TryStreamExt};

    /// A log stream that gives `parts` one after another, then nothing more
    /// and no end: a simulated node's follow.
    fn never_ending(parts: &[&str]) -> impl futures::AsyncBufRead {
        let parts: Vec<std::io::Result<Vec<u8>>> = parts.iter().map(|p| Ok(p.as_bytes().to_vec())).collect();
        futures::stream::iter(parts).chain(futures::stream::pending()).into_async_read()
    }

    async fn pumped(stream: impl futures::AsyncBufRead, ended: Option<std::future::Ready<()>>) -> Vec<String> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        pump(stream, ended, "a: ", &tx).await;
        drop(tx);
        let mut got = vec![];
        while let Some(line) = rx.recv().await {
            got.push(line.unwrap_or_else(|f| format!("failed: {}", f.0)));
        }
        got
    }

    #[tokio::test(start_paused = true)]
    async fn a_followed_log_keeps_its_last_line_without_a_newline_and_ends_once_quiet_after_the_pod() {
        let got = pumped(never_ending(&["one\ntw", "o\nthree, no newline"]), Some(std::future::ready(()))).await;
        assert_eq!(got, ["a: one", "a: two", "a: three, no newline"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_log_is_read_to_its_end_however_slow() {
        let slow = futures::stream::iter(["one\n", "two"]).then(|p| async move {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Ok::<_, std::io::Error>(p.as_bytes().to_vec())
        });
        let got = pumped(Box::pin(slow).into_async_read(), None::<std::future::Ready<()>>).await;
        assert_eq!(got, ["a: one", "a: two"]);
    }
}
