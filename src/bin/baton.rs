//! The `baton` command line. Follows kubectl's conventions: exit code 0 only
//! on success, errors on stderr in one line that says what to do.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

/// A failure of a command: printed on one line, with what to do.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

async fn client(cli: &Cli) -> Result<(kube::Client, String), Failure> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions { context: cli.context.clone(), ..Default::default() };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| Failure(format!("cannot read kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| Failure(format!("no usable kubeconfig ({e}); set KUBECONFIG or pass --kubeconfig")))?;
    let namespace = cli.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    Ok((kube::Client::try_from(config)?, namespace))
}

async fn submit(cli: &Cli, workflow: &str, params: &[String], name: Option<&str>, wait: bool) -> Result<ExitCode, Failure> {
    use baton::api::{Workflow, WorkflowInstance, WorkflowInstanceSpec, WorkflowRef};
    use kube::api::{Api, PostParams};
    let (client, ns) = client(cli).await?;
    let mut values = std::collections::BTreeMap::new();
    for p in params {
        let (k, v) = p.split_once('=').ok_or_else(|| Failure(format!("parameter {p:?} is not NAME=VALUE")))?;
        values.insert(k.to_string(), v.to_string());
    }
    let workflows: Api<Workflow> = Api::namespaced(client.clone(), &ns);
    let wf = workflows
        .get_opt(workflow)
        .await?
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
            let existing = runs.get(name.unwrap_or_default()).await?;
            if existing.spec.workflow_ref.name != workflow {
                return Err(Failure(format!(
                    "run {} already exists and runs workflow {}; choose another --name",
                    existing.metadata.name.unwrap_or_default(),
                    existing.spec.workflow_ref.name
                )));
            }
            existing
        }
        Err(e) => return Err(e.into()),
    };
    let run_name = created.metadata.name.clone().unwrap_or_default();
    println!("{run_name}");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let ended = |r: Option<&WorkflowInstance>| r.and_then(|r| r.status.as_ref()?.phase).is_some_and(|p| p.is_terminal());
    let done = kube::runtime::wait::await_condition(runs, &run_name, ended).await?;
    let phase = done.and_then(|r| r.status?.phase).map_or("Unknown", |p| p.as_str());
    eprintln!("run {run_name} ended {phase}");
    Ok(if phase == "Succeeded" { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
    };
    result.unwrap_or_else(|Failure(message)| {
        eprintln!("error: {message}");
        ExitCode::from(1)
    })
}
