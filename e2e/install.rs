//! Installing baton as users do: with the Helm chart (`charts/baton`) or the
//! kustomize base (`config/default`), against the local API server.
//!
//! - The chart lints, renders with its defaults and with a watched
//!   namespace, and `values.schema.json` (plus the chart's own checks)
//!   refuses bad values at render time.
//! - The chart's admission webhook comes with a certificate that is signed
//!   by its caBundle and valid for its Service's DNS name, and that an
//!   upgrade keeps.
//! - Both renders are accepted by the API server (`kubectl apply
//!   --server-side --dry-run=server`), and the kustomize base renders the
//!   same objects as the chart's defaults (labels aside).
//! - The RBAC is enough and no more. Method: the chart is installed for real
//!   into a fresh namespace; the controller runs as a local process whose
//!   kubeconfig holds only a token of the chart's ServiceAccount (`kubectl
//!   create token`), so the API server authorizes every call it makes
//!   against the chart's roles. A story then drives every code path that
//!   talks to the API: the sample runs finish (`Succeeded`), a parent run
//!   with a running child is stopped (child created, child patched, task pod
//!   deleted), a run with `ttlSecondsAfterFinished: 0` is deleted once it
//!   finished, the controller is killed and restarted under the same
//!   identity (its Lease exists: create refused, get, update), and finally
//!   stops cleanly (Lease deleted). The API server's audit log
//!   (`e2e/audit-policy.yaml`: one line per request made with a
//!   ServiceAccount token) is the record of what the controller did; the
//!   chart's admission webhook is installed too, served by that controller
//!   (its direct reads of runs are in the record). From it
//!   the test takes the set of (API group, resource, verb) the controller
//!   used and compares it with the set the chart's roles grant:
//!   * no request of the controller was refused (403), and every one was in
//!     the granted set: the RBAC is enough;
//!   * every granted (group, resource, verb) appears in the log: nothing is
//!     granted that the code does not call;
//!   * every request named the test's namespace: nothing cluster-wide is used.
//!
//!   The chart's namespaced variant (`controller.watchNamespace`) is the one
//!   installed, so that the controller cannot see other tests' runs; a check
//!   below asserts its rules are identical to the default ClusterRole's and
//!   to `config/rbac`'s, so the proof covers all three.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::api::{RunPhase, WorkflowInstance};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::Value;

use crate::runs::wait_phase;
use crate::support::{TestNs, kubeconfig, metric, root, state_dir, wait_for};

/// Runs a command: its stdout on success, else an error with its stderr.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The pinned helm (built on first use by `e2e/helm`).
pub(crate) fn helm(args: &[&str]) -> Result<String, String> {
    run(Command::new(root().join("e2e/helm")).args(args).current_dir(root()).env("KUBECONFIG", kubeconfig()), None)
}

pub(crate) fn kubectl(args: &[&str], stdin: Option<&str>) -> String {
    try_kubectl(args, stdin).unwrap_or_else(|e| panic!("{e}"))
}

/// `kubectl ARGS` against the local control plane: its stdout, or an error
/// with its stderr.
pub(crate) fn try_kubectl(args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    run(Command::new("kubectl").env("KUBECONFIG", kubeconfig()).args(args), stdin)
}

/// `helm template` of the chart as release `release` in `namespace`
/// (`--include-crds` when `set` holds "crds").
fn template(release: &str, namespace: &str, set: &[&str]) -> Result<String, String> {
    let mut args = vec!["template", release, "charts/baton", "--namespace", namespace];
    for s in set {
        if *s == "crds" {
            args.push("--include-crds");
            continue;
        }
        args.extend(["--set", s]);
    }
    helm(&args)
}

fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| Option::<Value>::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| v.is_object())
        .collect()
}

fn kind_name(v: &Value) -> (String, String) {
    (v["kind"].as_str().unwrap_or_default().into(), v["metadata"]["name"].as_str().unwrap_or_default().into())
}

/// (group, resource, verb) triples granted by RBAC rules.
fn granted(rules: &Value) -> BTreeSet<(String, String, String)> {
    let strs = |v: &Value| v.as_array().into_iter().flatten().map(|s| s.as_str().unwrap().to_string()).collect::<Vec<_>>();
    let mut out = BTreeSet::new();
    for rule in rules.as_array().expect("rules") {
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    assert!(g != "*" && r != "*" && v != "*", "a wildcard in the controller's RBAC: {rule}");
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

/// The rules of the objects of `kind` in a render, by name.
fn rules_of(docs: &[Value], kind: &str) -> BTreeMap<String, BTreeSet<(String, String, String)>> {
    docs.iter().filter(|d| d["kind"] == kind).map(|d| (kind_name(d).1, granted(&d["rules"]))).collect()
}

#[test]
fn chart_lints_and_bad_values_fail_at_render_time() {
    helm(&["lint", "--strict", "charts/baton"]).unwrap();
    helm(&["lint", "--strict", "charts/baton", "--set", "controller.watchNamespace=team-a,serviceMonitor.enabled=true"]).unwrap();

    let docs = documents(&template("baton", "baton-system", &[]).unwrap());
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &pod["containers"][0];
    let env: Vec<&str> = container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"), "downward API env: {env:?}");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(container["resources"]["limits"]["memory"].is_string() && container["resources"]["requests"]["cpu"].is_string());
    assert!(pod["topologySpreadConstraints"].is_array());
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > 15, "longer than the default lease duration");
    let kinds: BTreeSet<String> = docs.iter().map(|d| kind_name(d).0).collect();
    for k in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ValidatingWebhookConfiguration",
        "Secret",
    ] {
        assert!(kinds.contains(k), "the default render has a {k}: {kinds:?}");
    }
    assert!(!kinds.contains("ServiceMonitor"), "ServiceMonitor is opt-in");

    // webhook.enabled=false: no webhook, no certificate, no flag.
    let plain = documents(&template("baton", "baton-system", &["webhook.enabled=false"]).unwrap());
    let plain_kinds: BTreeSet<String> = plain.iter().map(|d| kind_name(d).0).collect();
    assert!(!plain_kinds.contains("ValidatingWebhookConfiguration") && !plain_kinds.contains("Secret"), "{plain_kinds:?}");
    assert!(!plain.iter().any(|d| kind_name(d).1.ends_with("-webhook")), "no webhook Service");
    let plain_pod = &plain.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"];
    assert!(!plain_pod["containers"][0]["args"].to_string().contains("webhook") && plain_pod["volumes"].is_null(), "{plain_pod}");

    let watched =
        documents(&template("baton", "baton-system", &["controller.watchNamespace=team-a", "serviceMonitor.enabled=true"]).unwrap());
    assert!(
        !watched.iter().any(|d| d["kind"] == "ClusterRole" || d["kind"] == "ClusterRoleBinding"),
        "watchNamespace needs no cluster-wide grant"
    );
    let args = watched.iter().find(|d| d["kind"] == "Deployment").unwrap()["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(args.as_array().unwrap().iter().any(|a| a == "--namespace=team-a"), "{args}");
    assert!(watched.iter().any(|d| d["kind"] == "ServiceMonitor"));
    // The same rules, whichever way they are bound.
    assert_eq!(rules_of(&watched, "Role")["baton"], rules_of(&docs, "ClusterRole")["baton"]);
    // The webhook then judges the watched namespace only: the controllers
    // cannot read runs elsewhere.
    let vwc = watched.iter().find(|d| d["kind"] == "ValidatingWebhookConfiguration").unwrap();
    for w in vwc["webhooks"].as_array().unwrap() {
        assert_eq!(w["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "team-a", "{w}");
    }

    for bad in [
        "replicaCount=-1",
        "controller.leaseDuration=15",
        "controller.logFormat=xml",
        "controller.watchNamespace=Not_A_Namespace",
        "terminationGracePeriodSeconds=10",
        "controller.renewInterval=20s",
        "webhook.port=8080",
        "webhook.timeoutSeconds=0",
        "unknownValue=1",
    ] {
        let refused = template("baton", "baton-system", &[bad]);
        assert!(refused.is_err(), "--set {bad} should be refused, got a render");
    }
}

/// Completes a TLS handshake with baton's webhook server setup serving the
/// certificate in `cert_dir`, as a client that trusts only `ca_pem` and
/// asks for `server_name` (what the API server does: chain, name, dates).
async fn handshake(cert_dir: &Path, ca_pem: &[u8], server_name: &str) -> Result<(), String> {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring::default_provider};

    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(baton::webhook::tls_config(cert_dir)?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        acceptor.accept(tcp).await.map(|_| ())
    });
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let result = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map(|_| ()).map_err(|e| e.to_string());
    let _ = server.await;
    result
}

fn base64_decode(text: &str) -> Vec<u8> {
    let out = run(Command::new("base64").arg("-d"), Some(text)).unwrap_or_else(|e| panic!("{e}"));
    out.into_bytes()
}

/// `helm template` with `--dry-run=server`: `lookup` reads the cluster, as
/// in `helm install` and `helm upgrade`.
fn template_against_cluster(release: &str, namespace: &str) -> Vec<Value> {
    let mut cmd = Command::new(root().join("e2e/helm"));
    cmd.env("KUBECONFIG", kubeconfig()).current_dir(root());
    cmd.args(["template", release, "charts/baton", "--namespace", namespace, "--dry-run=server"]);
    documents(&run(&mut cmd, None).unwrap_or_else(|e| panic!("{e}")))
}

#[tokio::test]
async fn chart_webhook_has_a_valid_certificate_that_upgrades_keep() {
    let docs = documents(&template("baton", "baton-system", &[]).unwrap());
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("a {kind}"));
    let (secret, vwc) = (find("Secret"), find("ValidatingWebhookConfiguration"));
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let service = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "baton-webhook").expect("the webhook Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook");
    let webhooks = vwc["webhooks"].as_array().unwrap();
    let scoped: BTreeMap<&str, (&str, &str)> = webhooks
        .iter()
        .map(|w| {
            let key = w["objectSelector"]["matchExpressions"][0]["key"].as_str().unwrap();
            (w["name"].as_str().unwrap(), (w["rules"][0]["resources"][0].as_str().unwrap(), key))
        })
        .collect();
    assert_eq!(
        scoped,
        BTreeMap::from([("pods.baton.dev", ("pods", "baton.dev/instance")), ("runs.baton.dev", ("workflowinstances", "baton.dev/parent"))]),
        "pods and child runs, by baton's labels only"
    );
    for w in webhooks {
        assert_eq!(w["rules"][0]["operations"], serde_json::json!(["CREATE"]));
        assert_eq!(w["objectSelector"]["matchExpressions"][0]["operator"], "Exists");
        assert_eq!((w["failurePolicy"].as_str(), w["sideEffects"].as_str()), (Some("Fail"), Some("None")));
        assert!(w["timeoutSeconds"].as_i64().unwrap() <= 10, "a small timeout: {w}");
        let client = &w["clientConfig"];
        assert_eq!(
            client["service"],
            serde_json::json!({"name": "baton-webhook", "namespace": "baton-system", "path": "/validate", "port": 443})
        );
        assert_eq!(client["caBundle"], secret["data"]["ca.crt"], "the caBundle is the Secret's CA");
    }
    let pod = &find("Deployment")["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].to_string();
    assert!(args.contains("--webhook-addr=0.0.0.0:9443") && args.contains("--webhook-cert-dir=/etc/baton/webhook"), "{args}");
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], secret["metadata"]["name"]);
    assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/etc/baton/webhook");

    // The certificate is signed by the caBundle and valid for the
    // Service's DNS name, and its key matches: a client that trusts only
    // the caBundle completes a handshake with baton's own TLS setup.
    let dir = state_dir().join(format!("webhook-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, key) in [("tls.crt", "tls.crt"), ("tls.key", "tls.key")] {
        std::fs::write(dir.join(file), base64_decode(secret["data"][key].as_str().unwrap())).unwrap();
    }
    let ca = base64_decode(vwc["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap());
    handshake(&dir, &ca, "baton-webhook.baton-system.svc").await.expect("the API server's view of the webhook certificate");
    let wrong = handshake(&dir, &ca, "baton-webhook.other.svc").await;
    assert!(wrong.as_ref().is_err_and(|e| e.contains("not valid for name")), "valid for its own Service only: {wrong:?}");
    std::fs::remove_dir_all(&dir).unwrap();

    // Upgrades keep the certificate: with the Secret in the cluster, the
    // chart reuses it (lookup), where a render without the cluster makes a
    // new CA every time.
    let ns = TestNs::new("chart-cert").await;
    let ca_of = |docs: &[Value]| docs.iter().find(|d| d["kind"] == "Secret").unwrap()["data"]["ca.crt"].clone();
    let install = template_against_cluster("baton", &ns.name);
    assert_ne!(ca_of(&install), ca_of(&documents(&template("baton", &ns.name, &[]).unwrap())), "a fresh render makes a new CA");
    let mut installed = install.iter().find(|d| d["kind"] == "Secret").unwrap().clone();
    // As `helm install` leaves it: owned by the release.
    installed["metadata"]["annotations"] =
        serde_json::json!({"meta.helm.sh/release-name": "baton", "meta.helm.sh/release-namespace": ns.name});
    kubectl(&["apply", "-f", "-"], Some(&installed.to_string()));
    let upgrade = template_against_cluster("baton", &ns.name);
    let kept = upgrade.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(kept["data"], installed["data"], "the upgrade keeps the Secret's CA, certificate and key");
    let vwc = upgrade.iter().find(|d| d["kind"] == "ValidatingWebhookConfiguration").unwrap();
    for w in vwc["webhooks"].as_array().unwrap() {
        assert_eq!(w["clientConfig"]["caBundle"], installed["data"]["ca.crt"]);
    }
    ns.done().await;
}

/// `kubectl apply --server-side --dry-run=server` of `yaml`; its warnings.
fn dry_run(yaml: &str) -> String {
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig())
        .args(["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the API server refused the render: {stderr}");
    stderr
}

#[tokio::test]
async fn renders_are_accepted_by_the_api_server_and_agree() {
    let ns = TestNs::new("render").await;
    // The chart's pods must meet the restricted Pod Security Standard: the
    // API server warns about any workload that would not.
    ns.kubectl(&["label", "namespace", &ns.name, "pod-security.kubernetes.io/warn=restricted"], None);
    let chart = template("baton", &ns.name, &["crds"]).unwrap();
    let warnings = dry_run(&chart);
    assert!(!warnings.contains("PodSecurity"), "{warnings}");
    let watched = template("baton", &ns.name, &[&format!("controller.watchNamespace={}", ns.name)]).unwrap();
    dry_run(&watched);

    let kustomized = kubectl(&["kustomize", &root().join("config/default").to_string_lossy()], None);
    // Dry-run of namespaced objects needs their namespace to exist.
    let _ = run(Command::new("kubectl").env("KUBECONFIG", kubeconfig()).args(["create", "namespace", "baton-system"]), None);
    dry_run(&kustomized);
    let samples = kubectl(&["kustomize", &root().join("config/samples").to_string_lossy()], None);
    kubectl(&["-n", &ns.name, "apply", "--server-side", "--dry-run=server", "-f", "-"], Some(&samples));

    // The cert-manager variant, without cert-manager's own kinds (its CRDs
    // are not installed here).
    let certmanager = kubectl(&["kustomize", &root().join("config/certmanager").to_string_lossy()], None);
    let cert_manager_kinds = |d: &Value| d["apiVersion"].as_str().is_some_and(|v| v.starts_with("cert-manager.io/"));
    let without: Vec<String> =
        documents(&certmanager).into_iter().filter(|d| !cert_manager_kinds(d)).map(|d| serde_yaml::to_string(&d).unwrap()).collect();
    dry_run(&without.join("---\n"));

    // config/ renders the chart's objects: config/default the chart
    // without its webhook, config/certmanager the chart's defaults, with
    // the same kinds and names and the same content once labels (Helm's
    // and kustomize's own) and the certificate (made by the chart, or by
    // cert-manager) are set aside. CRDs: only present in both;
    // tests/chart_in_sync.rs compares their bytes.
    let strip = |mut v: Value| {
        if v["kind"] == "CustomResourceDefinition" || v["kind"] == "Secret" || cert_manager_kinds(&v) {
            return Value::Null;
        }
        if let Some(webhooks) = v["webhooks"].as_array_mut() {
            for w in webhooks {
                w["clientConfig"].as_object_mut().unwrap().remove("caBundle");
            }
            v["metadata"].as_object_mut().unwrap().remove("annotations");
        }
        for path in [&["metadata"][..], &["spec", "template", "metadata"][..]] {
            let mut at = &mut v;
            for key in path {
                at = &mut at[*key];
            }
            if let Some(m) = at.as_object_mut() {
                m.remove("labels");
            }
        }
        v
    };
    let by_name = |yaml: &str| -> BTreeMap<(String, String), Value> {
        documents(yaml)
            .into_iter()
            .filter(|d| d["kind"] != "Namespace")
            .map(|d| (kind_name(&d), strip(d)))
            .filter(|(_, d)| !d.is_null())
            .collect()
    };
    for (values, base, kustomized) in
        [(&["crds", "webhook.enabled=false"][..], "config/default", &kustomized), (&["crds"][..], "config/certmanager", &certmanager)]
    {
        let (chart, kustomized) = (by_name(&template("baton", "baton-system", values).unwrap()), by_name(kustomized));
        assert_eq!(
            chart.keys().collect::<Vec<_>>(),
            kustomized.keys().collect::<Vec<_>>(),
            "chart ({values:?}) and {base} render other objects"
        );
        for (key, from_chart) in &chart {
            let from_kustomize = &kustomized[key];
            assert!(from_chart == from_kustomize, "{key:?} differs:\nchart ({values:?}): {from_chart}\n{base}: {from_kustomize}");
        }
    }
    ns.done().await;
}

/// A kubeconfig for the local API server that authenticates with `token`
/// only (no client certificate).
fn token_kubeconfig(path: &Path, token: &str) {
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig()).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}],
        "current-context": "sa",
    });
    std::fs::write(path, serde_yaml::to_string(&config).unwrap()).unwrap();
}

/// The controller as a local process that holds only the ServiceAccount's token.
struct Controller {
    child: Option<Child>,
    args: Vec<String>,
    kubeconfig: PathBuf,
    log: PathBuf,
}

impl Controller {
    /// Starts the controller, serving the admission webhook on a free port
    /// with the local control plane's webhook certificate.
    fn start(kubeconfig: &Path, namespace: &str, identity: &str) -> Controller {
        let cert_dir = state_dir().join("pki/webhook");
        let args = [
            "--identity",
            identity,
            "--namespace",
            namespace,
            "--lease-namespace",
            namespace,
            "--lease-duration",
            "4s",
            "--renew-interval",
            "500ms",
            "--metrics-addr",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
            "--webhook-cert-dir",
            &cert_dir.to_string_lossy(),
        ];
        let log = state_dir().join(format!("logs/controller-{namespace}-{identity}.log"));
        let mut c = Controller { child: None, args: args.iter().map(|s| s.to_string()).collect(), kubeconfig: kubeconfig.into(), log };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_baton-controller"))
                .env("KUBECONFIG", &self.kubeconfig)
                .env("RUST_LOG", "info,baton=debug,kube=warn")
                .env("NO_COLOR", "1")
                .args(&self.args)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start baton-controller"),
        );
    }

    /// The webhook's port, from the log; later starts keep it (the
    /// webhook configuration names it).
    async fn webhook_port(&mut self) -> u16 {
        let port = wait_for("the controller to serve its webhook", Duration::from_secs(30), || async {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let line = log.lines().find(|l| l.contains("serving the admission webhook")).ok_or("not yet")?;
            let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).ok_or(line.to_string())?;
            addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).ok_or(line.to_string())
        })
        .await;
        let at = self.args.iter().position(|a| a == "--webhook-addr").unwrap() + 1;
        self.args[at] = format!("127.0.0.1:{port}");
        port
    }

    /// One series of its metrics (since its last start).
    fn metric(&self, series: &str) -> f64 {
        let log = std::fs::read_to_string(&self.log).unwrap();
        let line = log.lines().rfind(|l| l.contains("serving /metrics")).expect("the metrics server's address in the log");
        let addr = line.split_whitespace().find_map(|w| w.strip_prefix("addr=")).unwrap();
        metric(addr.parse().unwrap(), series)
    }

    fn signal_and_wait(&mut self, signal: nix::sys::signal::Signal) {
        let mut child = self.child.take().expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "controller did not exit within 30s; see {}", self.log.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A workflow whose only task runs another workflow, whose only task runs
/// for a minute: stopping the parent must patch the child, and the child
/// must delete its pod. And a run that is deleted as soon as it finished
/// (ttlSecondsAfterFinished 0).
const NESTED: &str = r#"
apiVersion: baton.dev/v1alpha1
kind: Workflow
metadata: {name: slow}
spec:
  tasks:
    - name: wait
      container: {name: main, image: busybox, command: [sleep, "60"]}
      podTemplate: {metadata: {annotations: {baton.dev/sim-duration: 60s}}}
---
apiVersion: baton.dev/v1alpha1
kind: Workflow
metadata: {name: outer}
spec:
  tasks:
    - name: inner
      workflowRef: {name: slow}
---
apiVersion: baton.dev/v1alpha1
kind: WorkflowInstance
metadata: {name: outer-1}
spec: {workflowRef: {name: outer}}
---
apiVersion: baton.dev/v1alpha1
kind: WorkflowInstance
metadata: {name: short-lived}
spec: {workflowRef: {name: load-warehouse}, params: {date: "2026-01-01"}, ttlSecondsAfterFinished: 0}
"#;

/// One audit record of a request: (group, resource[/subresource], verb), namespace, HTTP code.
fn audit_records(log: &Path, user: &str) -> Vec<((String, String, String), String, i64)> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| {
        panic!("read {}: {e}; the API server runs without audit flags: run `e2e/cluster up` (it restarts it)", log.display())
    });
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user && e["stage"] != "ResponseStarted")
        .map(|e| {
            let o = &e["objectRef"];
            let mut resource = o["resource"].as_str().unwrap_or_default().to_string();
            if let Some(sub) = o["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            let group = o["apiGroup"].as_str().unwrap_or_default().to_string();
            let verb = e["verb"].as_str().unwrap_or_default().to_string();
            (
                (group, resource, verb),
                o["namespace"].as_str().unwrap_or_default().to_string(),
                e["responseStatus"]["code"].as_i64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test]
async fn chart_rbac_is_enough_to_run_workflows_and_no_more() {
    let ns = TestNs::new("install").await;
    let release = ns.name.clone();
    let rendered = template(&release, &ns.name, &[&format!("controller.watchNamespace={}", ns.name)]).unwrap();
    let docs = documents(&rendered);
    // The chart's webhook judges this namespace, and the local control
    // plane's webhook leaves it alone (e2e/cluster, register_webhook).
    ns.kubectl(&["label", "namespace", &ns.name, "e2e.baton.dev/webhook=chart"], None);
    let (webhook, rest): (Vec<Value>, Vec<Value>) = docs.iter().cloned().partition(|d| d["kind"] == "ValidatingWebhookConfiguration");
    // The controller here is a local process; the Deployment gets no pods
    // (with the real node the deployment controller runs and would make
    // them on the fake nodes, over and over as KWOK completes them).
    let rest: Vec<String> = rest
        .into_iter()
        .map(|mut d| {
            if d["kind"] == "Deployment" {
                d["spec"]["replicas"] = 0.into();
            }
            serde_yaml::to_string(&d).unwrap()
        })
        .collect();
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&rest.join("---\n")));
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").map(kind_name).unwrap().1;
    let user = format!("system:serviceaccount:{}:{sa}", ns.name);
    let mut grants: BTreeSet<_> = BTreeSet::new();
    for kind in ["Role", "ClusterRole"] {
        grants.extend(rules_of(&docs, kind).into_values().flatten());
    }

    let token = kubectl(&["-n", &ns.name, "create", "token", &sa, "--duration=1h"], None);
    let kc = state_dir().join(format!("kubeconfig-{}", ns.name));
    token_kubeconfig(&kc, token.trim());
    let mut controller = Controller::start(&kc, &ns.name, "install-a");

    // The API server cannot reach the chart's Service here, so the webhook
    // configuration calls the controller process directly, on 127.0.0.1
    // with the local control plane's CA; everything else is the chart's.
    let mut webhook = webhook.into_iter().next().expect("the chart's webhook configuration");
    let port = controller.webhook_port().await;
    let ca = std::fs::read(state_dir().join("pki/ca.crt")).unwrap();
    let ca = run(Command::new("base64").arg("-w0"), Some(std::str::from_utf8(&ca).unwrap())).unwrap();
    for w in webhook["webhooks"].as_array_mut().unwrap() {
        assert_eq!(w["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], ns.name.as_str());
        w["clientConfig"] = serde_json::json!({"url": format!("https://127.0.0.1:{port}/validate"), "caBundle": ca});
    }
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&webhook.to_string()));

    // The samples run to the end with nothing but the chart's permissions.
    let samples = kubectl(&["kustomize", &root().join("config/samples").to_string_lossy()], None);
    ns.apply(&samples);
    ns.apply(NESTED);
    for run in ["diamond-2026-11-21", "etl-2026-11-21", "heartbeat-manual"] {
        let done = wait_phase(&ns, run, |p| matches!(p, RunPhase::Succeeded | RunPhase::Failed)).await;
        assert_eq!(done.status.unwrap().phase, Some(RunPhase::Succeeded), "run {run}");
    }

    // A run of a Workflow that does not exist fails visibly. The cache does
    // not have it, so the controller asks the API server (the Workflow `get`).
    ns.apply("apiVersion: baton.dev/v1alpha1\nkind: WorkflowInstance\nmetadata: {name: nowhere}\nspec: {workflowRef: {name: missing}}\n");
    let done = wait_phase(&ns, "nowhere", |p| matches!(p, RunPhase::Failed)).await;
    let valid = done.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Valid").expect("condition Valid");
    assert_eq!(valid.reason, "WorkflowNotFound");

    // The chart's webhook judged every pod and child run, through this
    // controller (the only one serving it) and with the chart's RBAC.
    let allowed = controller.metric("baton_admission_reviews_total{verdict=\"allowed\"}");
    // (Task pods only: with the real node, the deployment controller runs
    // and the applied Deployment makes pods too, which the webhook skips.)
    let created = ns.api::<Pod>().list(&ListParams::default().labels("baton.dev/instance")).await.unwrap().items.len();
    assert!(allowed >= created as f64 && created > 0, "{allowed} admitted, {created} pods");
    assert_eq!(controller.metric("baton_admission_reviews_total{verdict=\"denied\"}"), 0.0);

    // A crash and a restart under the same identity: the Lease is still there.
    controller.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    controller.spawn();

    // Stop the parent while its child's task runs: the child is patched and
    // deletes its pod.
    let runs: Api<WorkflowInstance> = ns.api();
    wait_for("the child run's task to be running", Duration::from_secs(60), || async {
        let child = runs.get("outer-1-inner").await.map_err(|e| e.to_string())?;
        let running = child.status.as_ref().is_some_and(|s| s.tasks.iter().any(|t| t.pod_name.is_some()));
        if running { Ok(()) } else { Err(format!("{:?}", child.status.map(|s| s.phase))) }
    })
    .await;
    runs.patch("outer-1", &PatchParams::default(), &Patch::Merge(&serde_json::json!({"spec": {"shutdown": "Stop"}}))).await.unwrap();
    for run in ["outer-1", "outer-1-inner"] {
        let done = wait_phase(&ns, run, |p| matches!(p, RunPhase::Stopped | RunPhase::Failed | RunPhase::Succeeded)).await;
        assert_eq!(done.status.unwrap().phase, Some(RunPhase::Stopped), "run {run}");
    }

    // Every granted verb shows up in the audit log (the scheduler's writes
    // included); wait for them, then stop cleanly (the Lease delete).
    let log = state_dir().join("logs/audit.log");
    let lease_delete = ("coordination.k8s.io".to_string(), "leases".to_string(), "delete".to_string());
    let before_stop: BTreeSet<_> = grants.iter().filter(|g| **g != lease_delete).cloned().collect();
    wait_for("every granted verb but the Lease delete in the audit log", Duration::from_secs(90), || async {
        let used: BTreeSet<_> = audit_records(&log, &user).into_iter().map(|r| r.0).collect();
        let missing: Vec<_> = before_stop.difference(&used).collect();
        if missing.is_empty() { Ok(()) } else { Err(format!("not used yet: {missing:?}")) }
    })
    .await;
    controller.signal_and_wait(nix::sys::signal::Signal::SIGTERM);

    let records = wait_for("the Lease delete in the audit log", Duration::from_secs(10), || async {
        let records = audit_records(&log, &user);
        if records.iter().any(|r| r.0 == lease_delete) { Ok(records) } else { Err("no delete yet".into()) }
    })
    .await;
    let refused: BTreeSet<_> = records.iter().filter(|r| r.2 == 403).map(|r| &r.0).collect();
    assert!(refused.is_empty(), "the controller was refused {refused:?}: the chart's RBAC is not enough");
    let used: BTreeSet<_> = records.iter().map(|r| r.0.clone()).collect();
    let beyond: Vec<_> = used.difference(&grants).collect();
    assert!(beyond.is_empty(), "used but not granted: {beyond:?}");
    let unused: Vec<_> = grants.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never used by the controller: {unused:?}");
    let elsewhere: BTreeSet<_> = records.iter().filter(|r| r.1 != ns.name).map(|r| (&r.0, &r.1)).collect();
    assert!(elsewhere.is_empty(), "requests outside the namespace: {elsewhere:?}");
    let _ = std::fs::remove_file(&kc);
    kubectl(&["delete", "validatingwebhookconfiguration", webhook["metadata"]["name"].as_str().unwrap()], None);
    ns.done().await;
}
