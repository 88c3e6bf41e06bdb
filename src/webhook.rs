//! The validating admission webhook that makes the API server enforce the
//! fencing epoch (DESIGN.md, "Identity rules (v0.2)").
//!
//! A controller frozen between its fenced status write and its create call
//! (SIGSTOP, a long GC pause, a request queued by API Priority and Fairness)
//! may send the create after it lost the run. Local checks cannot close
//! that window; the API server can: every pod and child run carries the
//! epoch of the owner that made it (`baton.dev/owner-epoch`), and on CREATE
//! this webhook reads the run it belongs to straight from the API server and
//! refuses the object when its epoch is below the run's `status.owner.epoch`,
//! when the run is gone, or when the name now belongs to another run (UID).
//!
//! [`judge`] is the decision, a pure function; the rest is a thin HTTPS
//! server: rustls with the certificate in `--webhook-cert-dir` (read again
//! when the files change), one request per connection, on a `SO_REUSEPORT`
//! socket so that several controllers on one host share the port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Client;
use kube::api::Api;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring::{default_provider, sign::any_supported_type};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tracing::{debug, info, warn};

use crate::api::{GROUP, WorkflowInstance};
use crate::metrics::{Metrics, VerdictLabel};
use crate::objects::{ANNOTATION_OWNER_EPOCH, LABEL_INSTANCE, LABEL_PARENT};

/// The URL path the API server posts AdmissionReviews to.
pub const PATH: &str = "/validate";
/// Certificate and key file names in `--webhook-cert-dir` (those of a
/// `kubernetes.io/tls` Secret).
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// The outcome of a review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused, with the reason the creator sees.
    Deny(String),
}

/// The run an object being created says it belongs to: its controller
/// ownerReference of kind WorkflowInstance, when the object carries baton's
/// label for its kind (`baton.dev/instance` on a pod, `baton.dev/parent` on
/// a child run). `None`: not baton's to judge, allowed without a lookup.
pub fn claimed_run<'a>(kind: &str, meta: &'a ObjectMeta) -> Option<&'a OwnerReference> {
    let label = match kind {
        "Pod" => LABEL_INSTANCE,
        "WorkflowInstance" => LABEL_PARENT,
        _ => return None,
    };
    meta.labels.as_ref()?.get(label)?;
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "WorkflowInstance" && r.api_version.split('/').next() == Some(GROUP))
}

/// Judges the create of an object whose controller ownerReference is
/// `owner`, against that run as just read from the API server (`None`: it
/// does not exist). Pure.
pub fn judge(meta: &ObjectMeta, owner: &OwnerReference, run: Option<&WorkflowInstance>) -> Verdict {
    let Some(run) = run else {
        return Verdict::Deny(format!("run {} does not exist", owner.name));
    };
    let uid = run.metadata.uid.as_deref().unwrap_or_default();
    if uid != owner.uid {
        return Verdict::Deny(format!(
            "run {} is another run now (uid {uid}, the object names uid {}): it was deleted and created again",
            owner.name, owner.uid
        ));
    }
    let annotation = meta.annotations.as_ref().and_then(|a| a.get(ANNOTATION_OWNER_EPOCH));
    let Some(epoch) = annotation.and_then(|e| e.parse::<i64>().ok()) else {
        return Verdict::Deny(match annotation {
            None => format!("annotation {ANNOTATION_OWNER_EPOCH} is missing: only the owner of run {} creates its objects", owner.name),
            Some(bad) => format!("annotation {ANNOTATION_OWNER_EPOCH} is not a number: {bad:?}"),
        });
    };
    let current = run.status.as_ref().and_then(|s| s.owner.as_ref());
    let current_epoch = current.map_or(0, |o| o.epoch);
    if epoch < current_epoch {
        let holder = current.map(|o| o.controller.as_str()).filter(|c| !c.is_empty()).unwrap_or("nobody (released)");
        return Verdict::Deny(format!(
            "{STALE_OWNER}: created at owner epoch {epoch}, but run {} is at epoch {current_epoch} (owned by {holder})",
            owner.name
        ));
    }
    Verdict::Allow
}

/// How a refusal for an older epoch starts; the controller that sent the
/// create recognises it and knows it is fenced off.
pub const STALE_OWNER: &str = "stale owner";

/// What the review handler needs: a client for the direct GET of the run,
/// the metrics, and this controller's identity for the log.
pub struct Webhook {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub identity: String,
}

impl Webhook {
    /// Reviews one request: allowed unless it is the CREATE of a baton
    /// object that [`judge`] refuses.
    async fn review(&self, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let response = AdmissionResponse::from(request);
        let object = request.object.as_ref().filter(|_| request.operation == Operation::Create);
        let Some((object, owner)) = object.and_then(|o| Some((o, claimed_run(&request.kind.kind, &o.metadata)?))) else {
            return response;
        };
        let namespace = request.namespace.as_deref().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_else(|| request.name.clone());
        let kind = &request.kind.kind;
        let runs: Api<WorkflowInstance> = Api::namespaced(self.client.clone(), namespace);
        // A direct GET (no resourceVersion): a quorum read, never a cache.
        let verdict = match runs.get_opt(&owner.name).await {
            Ok(run) => judge(&object.metadata, owner, run.as_ref()),
            Err(e) => {
                self.count("error");
                warn!(namespace, run = %owner.name, controller = %self.identity, %kind, object = %name, error = %e, "admission review failed: cannot read the run");
                return refuse(response, 503, "ServiceUnavailable", format!("baton cannot read run {}: {e}", owner.name));
            }
        };
        match verdict {
            Verdict::Allow => {
                self.count("allowed");
                debug!(namespace, run = %owner.name, %kind, object = %name, "admission allowed");
                response
            }
            Verdict::Deny(reason) => {
                self.count("denied");
                warn!(namespace, run = %owner.name, controller = %self.identity, %kind, object = %name, %reason, "admission denied");
                // 403, not 409: a fenced-off create must never look like
                // AlreadyExists to its sender, which would adopt.
                refuse(response, 403, "Forbidden", reason)
            }
        }
    }

    fn count(&self, verdict: &'static str) {
        self.metrics.admission_reviews.get_or_create(&VerdictLabel { verdict }).inc();
    }
}

fn refuse(response: AdmissionResponse, code: u16, reason: &str, message: String) -> AdmissionResponse {
    let mut response = response.deny(message);
    response.result.code = code;
    response.result.reason = reason.to_string();
    response
}

async fn handle(State(webhook): State<Arc<Webhook>>, body: Bytes) -> Response {
    let request = serde_json::from_slice::<AdmissionReview<DynamicObject>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|review| TryInto::<AdmissionRequest<_>>::try_into(review).map_err(|_| "the AdmissionReview holds no request".into()));
    let response = match request {
        Ok(request) => webhook.review(&request).await,
        Err(e) => AdmissionResponse::invalid(e),
    };
    match serde_json::to_vec(&response.into_review()) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The serving certificate: `tls.crt` and `tls.key` of a directory, read
/// again at the next handshake after either file changed (a Secret volume
/// updated by the kubelet, a certificate renewed by cert-manager). A pair
/// that does not load keeps the previous one in service.
pub struct CertFiles {
    dir: PathBuf,
    current: RwLock<(Stamp, Arc<CertifiedKey>)>,
}

/// When the two files were last changed, as far as the file system says.
type Stamp = [Option<SystemTime>; 2];

impl CertFiles {
    /// Reads the pair once; fails when it does not load.
    pub fn new(dir: &Path) -> Result<CertFiles, String> {
        let stamp = stamp(dir);
        let key = load(dir)?;
        Ok(CertFiles { dir: dir.to_path_buf(), current: RwLock::new((stamp, key)) })
    }

    /// The pair in service, read again first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = stamp(&self.dir);
        {
            let current = self.current.read().expect("poisoned");
            if current.0 == now {
                return current.1.clone();
            }
        }
        let mut current = self.current.write().expect("poisoned");
        match load(&self.dir) {
            Ok(key) => {
                info!(dir = %self.dir.display(), "webhook certificate reloaded");
                *current = (now, key);
            }
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "webhook certificate changed but does not load; keeping the previous one");
                current.0 = now;
            }
        }
        current.1.clone()
    }
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles").field("dir", &self.dir).finish()
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(dir: &Path) -> Stamp {
    [CERT_FILE, KEY_FILE].map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
}

fn load(dir: &Path) -> Result<Arc<CertifiedKey>, String> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let signer = any_supported_type(&key).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| format!("{} and {} do not match: {e}", cert_path.display(), key_path.display()))?;
    Ok(Arc::new(certified))
}

/// The TLS configuration of the webhook server: the certificate in `dir`,
/// HTTP/1.1 only.
pub fn tls_config(dir: &Path) -> Result<ServerConfig, String> {
    let certs = CertFiles::new(dir)?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e: rustls::Error| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A listening socket with `SO_REUSEPORT`: several controllers on one host
/// (the local control plane) share one webhook port, and the kernel spreads
/// connections over them.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Binds the webhook on `addr` with the certificate in `cert_dir`; returns
/// the bound address and the server future.
pub fn serve(
    addr: SocketAddr,
    cert_dir: &Path,
    webhook: Webhook,
) -> crate::Result<(SocketAddr, impl std::future::Future<Output = ()> + use<>)> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(cert_dir).map_err(crate::Error::Invalid)?));
    let listener = bind(addr)?;
    let bound = listener.local_addr()?;
    let app = Router::new().route(PATH, post(handle)).with_state(Arc::new(webhook));
    let server = async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, service) = (acceptor.clone(), TowerToHyperService::new(app.clone()));
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "webhook TLS handshake failed"),
                    Err(_) => return debug!(%peer, "webhook TLS handshake timed out"),
                };
                // One review per connection: the API server opens a new one
                // each time, so the kernel spreads reviews over the
                // controllers sharing the port, and no pooled connection
                // stays pinned to a controller that froze.
                let http = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(e) = http.await {
                    debug!(%peer, error = %e, "webhook connection ended with an error");
                }
            });
        }
    };
    Ok((bound, server))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Owner, WorkflowInstanceSpec, WorkflowInstanceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn run(uid: &str, epoch: Option<i64>) -> WorkflowInstance {
        let mut r = WorkflowInstance::new("etl-1", WorkflowInstanceSpec::default());
        r.metadata.uid = Some(uid.into());
        r.status = epoch.map(|epoch| WorkflowInstanceStatus {
            owner: Some(Owner { controller: "c-1".into(), lease: "c-1".into(), epoch, since: Time(Default::default()) }),
            ..Default::default()
        });
        r
    }

    fn owner_ref(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "baton.dev/v1alpha1".into(),
            kind: "WorkflowInstance".into(),
            name: "etl-1".into(),
            uid: uid.into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn object(label: &str, epoch: Option<&str>, owner: Option<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some("etl-1-extract-0".into()),
            labels: Some([(label.to_string(), "etl-1".to_string())].into()),
            annotations: epoch.map(|e| [(ANNOTATION_OWNER_EPOCH.to_string(), e.to_string())].into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        }
    }

    fn denied(v: Verdict) -> String {
        match v {
            Verdict::Deny(reason) => reason,
            Verdict::Allow => panic!("allowed"),
        }
    }

    #[test]
    fn only_baton_objects_with_a_run_as_controller_are_judged() {
        let pod = object(LABEL_INSTANCE, Some("1"), Some(owner_ref("u1")));
        assert_eq!(claimed_run("Pod", &pod).map(|r| r.uid.as_str()), Some("u1"));
        let child = object(LABEL_PARENT, Some("1"), Some(owner_ref("u1")));
        assert!(claimed_run("WorkflowInstance", &child).is_some());
        // The label of the other kind does not count.
        assert!(claimed_run("WorkflowInstance", &pod).is_none());
        assert!(claimed_run("Pod", &child).is_none());
        assert!(claimed_run("ConfigMap", &pod).is_none());
        // No controller ownerReference to a run: not baton's (a scheduled
        // run is owned by its Workflow; a hand-made pod by nobody).
        assert!(claimed_run("Pod", &object(LABEL_INSTANCE, Some("1"), None)).is_none());
        let not_controller = OwnerReference { controller: None, ..owner_ref("u1") };
        assert!(claimed_run("Pod", &object(LABEL_INSTANCE, Some("1"), Some(not_controller))).is_none());
        let workflow = OwnerReference { kind: "Workflow".into(), ..owner_ref("u1") };
        assert!(claimed_run("WorkflowInstance", &object(LABEL_PARENT, None, Some(workflow))).is_none());
        let other_group = OwnerReference { api_version: "example.com/v1".into(), ..owner_ref("u1") };
        assert!(claimed_run("Pod", &object(LABEL_INSTANCE, Some("1"), Some(other_group))).is_none());
    }

    #[test]
    fn the_current_or_a_newer_epoch_is_allowed() {
        let pod = object(LABEL_INSTANCE, Some("3"), Some(owner_ref("u1")));
        assert_eq!(judge(&pod, &owner_ref("u1"), Some(&run("u1", Some(3)))), Verdict::Allow);
        assert_eq!(judge(&pod, &owner_ref("u1"), Some(&run("u1", Some(2)))), Verdict::Allow);
        // A run nobody has claimed yet is at epoch 0.
        let first = object(LABEL_INSTANCE, Some("0"), Some(owner_ref("u1")));
        assert_eq!(judge(&first, &owner_ref("u1"), Some(&run("u1", None))), Verdict::Allow);
    }

    #[test]
    fn a_stale_epoch_is_denied_naming_both_epochs_and_the_owner() {
        let pod = object(LABEL_INSTANCE, Some("2"), Some(owner_ref("u1")));
        let reason = denied(judge(&pod, &owner_ref("u1"), Some(&run("u1", Some(3)))));
        assert!(reason.contains("epoch 2") && reason.contains("epoch 3") && reason.contains("owned by c-1"), "{reason}");
        let mut released = run("u1", Some(3));
        released.status.as_mut().unwrap().owner.as_mut().unwrap().release();
        let reason = denied(judge(&pod, &owner_ref("u1"), Some(&released)));
        assert!(reason.contains("nobody (released)"), "{reason}");
    }

    #[test]
    fn a_missing_or_replaced_run_is_denied() {
        let pod = object(LABEL_INSTANCE, Some("9"), Some(owner_ref("u1")));
        assert!(denied(judge(&pod, &owner_ref("u1"), None)).contains("does not exist"));
        let reason = denied(judge(&pod, &owner_ref("u1"), Some(&run("u2", Some(1)))));
        assert!(reason.contains("uid u2") && reason.contains("uid u1"), "{reason}");
    }

    #[test]
    fn a_missing_or_unreadable_epoch_is_denied() {
        let current = run("u1", Some(1));
        let reason = denied(judge(&object(LABEL_INSTANCE, None, Some(owner_ref("u1"))), &owner_ref("u1"), Some(&current)));
        assert!(reason.contains("missing"), "{reason}");
        for bad in ["", "two", "1.5", "99999999999999999999"] {
            let reason = denied(judge(&object(LABEL_INSTANCE, Some(bad), Some(owner_ref("u1"))), &owner_ref("u1"), Some(&current)));
            assert!(reason.contains("not a number"), "{bad:?}: {reason}");
        }
    }

    /// A certificate pair made for these tests (P-256, valid until 2126).
    const CERT_A: &str = include_str!("webhook/testdata/a.crt");
    const KEY_A: &str = include_str!("webhook/testdata/a.key");
    const CERT_B: &str = include_str!("webhook/testdata/b.crt");
    const KEY_B: &str = include_str!("webhook/testdata/b.key");

    fn temp_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("baton-webhook-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write_pair(dir: &Path, cert: &str, key: &str) {
        std::fs::write(dir.join(CERT_FILE), cert).unwrap();
        std::fs::write(dir.join(KEY_FILE), key).unwrap();
    }

    /// Sets both files' modification time `secs` seconds into the past, so
    /// a rewrite within the same clock tick still counts as a change.
    fn age(dir: &Path, secs: u64) {
        let when = SystemTime::now() - Duration::from_secs(secs);
        for f in [CERT_FILE, KEY_FILE] {
            std::fs::File::options().write(true).open(dir.join(f)).unwrap().set_modified(when).unwrap();
        }
    }

    #[test]
    fn certificate_files_are_read_again_when_they_change() {
        let dir = temp_dir("reload");
        write_pair(&dir, CERT_A, KEY_A);
        age(&dir, 60);
        let files = CertFiles::new(&dir).unwrap();
        let first = files.current();
        assert!(Arc::ptr_eq(&first, &files.current()), "unchanged files are not read again");

        // A pair that does not match keeps the old one in service.
        write_pair(&dir, CERT_B, KEY_A);
        age(&dir, 30);
        assert_eq!(files.current().cert, first.cert);

        write_pair(&dir, CERT_B, KEY_B);
        let second = files.current();
        assert_ne!(second.cert, first.cert, "the new certificate is served");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_or_mismatched_pair_fails_at_start() {
        let dir = temp_dir("bad");
        assert!(CertFiles::new(&dir).unwrap_err().contains(CERT_FILE));
        write_pair(&dir, CERT_A, KEY_B);
        assert!(CertFiles::new(&dir).unwrap_err().contains("do not match"));
        write_pair(&dir, CERT_A, KEY_A);
        assert!(CertFiles::new(&dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
