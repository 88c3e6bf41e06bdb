//! What this controller knows of every run's pods and child runs, kept from
//! the watches it already has: one index per kind, keyed by the UID of the
//! run that controls the object, holding only what the planner reads (not
//! whole objects, so 10,000 finished runs' pods cost little memory). A
//! reconcile reads it instead of listing from the API server.
//!
//! A cache lags the API server by the watch's delay. That stays harmless:
//! - what this controller knows exists from an API answer (a create it
//!   made; the listing a new owner makes when it takes a run over from
//!   another controller) counts as existing until the watch shows it, or a
//!   listing begun after it completes without it (the "expectations" of
//!   client-go's ReplicaSet controller), so a pod is never taken for a
//!   missing one just because its watch is behind another's;
//! - what the watch showed deleted is never brought back by an older answer;
//! - an object is a run's only by its controller ownerReference's UID;
//! - the fenced status write before any action proves the run as read is
//!   current, and a create that meets `AlreadyExists` adopts only by UID.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use crate::api::WorkflowInstance;
use crate::objects::{ANNOTATION_PARENT_STOP, ANNOTATION_PARENT_SUSPEND, ANNOTATION_PARENT_SUSPEND_PRIOR, LABEL_TASK};
use crate::planner::{Observed, ObservedChild, ObservedPod, Passed, PodState};

/// What a cache of whole objects (runs, Workflows) keeps of one: all but
/// its managedFields, which the controller never reads and which are about
/// half of a run's JSON. (A status write of such a copy leaves them be:
/// the API server keeps managedFields a write does not mention.)
pub fn trim<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Marks a cached run kept without its `status.workflowSpec`.
pub const WITHOUT_SPEC: &str = "baton.dev/cached-without-workflow-spec";

/// What the cache keeps of a run: [`trim`], and for an idle run (finished,
/// cleaned up, no TTL to wait for), also not its copy of the workflow (most of a run's
/// memory; thousands of finished runs stay cached until they are deleted).
/// Such a copy is marked ([`WITHOUT_SPEC`]); the rare reconcile that acts
/// on it reads the whole run first, and a status write of it is refused
/// (see `fence::check`).
pub fn trim_run(run: &mut WorkflowInstance) {
    trim(run);
    if crate::retention::idle(run)
        && let Some(status) = run.status.as_mut()
        && status.workflow_spec.take().is_some()
    {
        run.annotations_mut().insert(WITHOUT_SPEC.into(), "true".into());
    }
}

/// Whether `run` is a cached copy kept without its workflow spec.
pub fn without_spec(run: &WorkflowInstance) -> bool {
    run.annotations().contains_key(WITHOUT_SPEC)
}

/// Longest an object known from an API answer counts as existing without
/// the watch showing it (a safety net: a relist settles it sooner).
const EXPECT_FOR: Duration = Duration::from_secs(600);
/// How long the UID of an object the watch showed deleted is remembered,
/// so that an older API answer naming it does not bring it back.
const TOMBSTONE_FOR: Duration = Duration::from_secs(600);

/// A kind whose objects a run controls, and what the planner reads of one.
pub trait Observe: Resource + Sized {
    type View: Clone;
    fn view(&self) -> Self::View;
}

impl Observe for Pod {
    type View = ObservedPod;

    fn view(&self) -> ObservedPod {
        let status = self.status.as_ref();
        let terminated = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .find_map(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()));
        let state = match status.and_then(|s| s.phase.as_deref()) {
            Some("Succeeded") => PodState::Succeeded,
            Some("Failed") => PodState::Failed,
            Some("Running") => PodState::Running,
            _ => PodState::Waiting,
        };
        ObservedPod {
            uid: self.uid().unwrap_or_default(),
            task: self.labels().get(LABEL_TASK).cloned().unwrap_or_default(),
            name: self.name_any(),
            state,
            exit_code: terminated.map(|t| t.exit_code),
            message: terminated.and_then(|t| t.message.clone()),
            reason: terminated.and_then(|t| t.reason.clone()).or_else(|| status.and_then(|s| s.reason.clone())),
            deleting: self.metadata.deletion_timestamp.is_some(),
        }
    }
}

impl Observe for WorkflowInstance {
    type View = ObservedChild;

    fn view(&self) -> ObservedChild {
        let annotations = self.annotations();
        ObservedChild {
            uid: self.uid().unwrap_or_default(),
            resource_version: self.resource_version().unwrap_or_default(),
            task: self.labels().get(LABEL_TASK).cloned().unwrap_or_default(),
            name: self.name_any(),
            phase: self.status.as_ref().and_then(|s| s.phase),
            suspend: self.spec.suspend,
            passed: Passed {
                suspend: annotations.get(ANNOTATION_PARENT_SUSPEND).and_then(|v| v.parse().ok()),
                prior: annotations.get(ANNOTATION_PARENT_SUSPEND_PRIOR).and_then(|v| v.parse().ok()),
                stop: annotations.contains_key(ANNOTATION_PARENT_STOP),
            },
        }
    }
}

/// The UID of the run that controls `object`, if a run does.
fn controlling_run<K: Resource>(object: &K) -> Option<String> {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "WorkflowInstance" && r.api_version.starts_with("baton.dev/"))
        .map(|r| r.uid.clone())
}

/// The objects of one listing, by controlling run.
struct Entries<V> {
    /// run UID -> (name, object UID, view), a few per run: a list, not a
    /// map (a map's smallest node holds eleven).
    by_run: HashMap<String, Vec<(String, String, V)>>,
    /// object UID -> (run UID, name), to find an object again when it is
    /// deleted or changes hands.
    place: HashMap<String, (String, String)>,
}

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries { by_run: HashMap::new(), place: HashMap::new() }
    }
}

impl<V> Entries<V> {
    fn remove(&mut self, uid: &str) {
        if let Some((run, _)) = self.place.remove(uid)
            && let Some(objects) = self.by_run.get_mut(&run)
        {
            objects.retain(|(_, u, _)| u != uid);
            if objects.is_empty() {
                self.by_run.remove(&run);
            }
        }
    }

    fn insert(&mut self, uid: String, run: Option<String>, name: String, view: V) {
        self.remove(&uid);
        if let Some(run) = run {
            self.place.insert(uid.clone(), (run.clone(), name.clone()));
            let objects = self.by_run.entry(run).or_default();
            // A namesake with another UID is gone (names are unique): replaced.
            if let Some(i) = objects.iter().position(|(n, _, _)| *n == name) {
                let (_, gone, _) = objects.swap_remove(i);
                self.place.remove(&gone);
            }
            objects.push((name, uid, view));
            objects.shrink_to_fit();
        }
    }
}

struct State<V> {
    live: Entries<V>,
    /// A listing in progress (after the watch restarted); it replaces
    /// `live` once complete, so a re-list never shows a partial world.
    relisting: Option<Entries<V>>,
    /// The first listing completed.
    synced: bool,
    /// Objects known from an API answer that the watch has not shown yet:
    /// object UID -> (run UID, name, view, when known).
    expected: HashMap<String, (String, String, V, Instant)>,
    /// When the listing in progress began.
    relist_began: Option<Instant>,
    /// UIDs the watch showed deleted, and when.
    deleted: HashMap<String, Instant>,
}

/// The objects of one kind that runs control, by run.
pub struct Index<K: Observe> {
    state: Mutex<State<K::View>>,
}

impl<K: Observe> Default for Index<K> {
    fn default() -> Self {
        let state = State {
            live: Entries::default(),
            relisting: None,
            synced: false,
            expected: HashMap::new(),
            relist_began: None,
            deleted: HashMap::new(),
        };
        Index { state: Mutex::new(state) }
    }
}

impl<K: Observe> Index<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<K::View>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes in one event of the kind's watch.
    pub fn apply(&self, event: &Event<K>) {
        let mut st = self.lock();
        match event {
            Event::Init => {
                st.relisting = Some(Entries::default());
                st.relist_began = Some(Instant::now());
            }
            Event::InitApply(object) => {
                st.expected.remove(&object.uid().unwrap_or_default());
                if let Some(listing) = st.relisting.as_mut() {
                    listing.insert(object.uid().unwrap_or_default(), controlling_run(object), object.name_any(), object.view());
                }
            }
            Event::InitDone => {
                if let Some(listing) = st.relisting.take() {
                    st.live = listing;
                }
                // What was known before this listing began and is not in it
                // is gone.
                if let Some(began) = st.relist_began.take() {
                    st.expected.retain(|_, (_, _, _, since)| *since > began);
                }
                st.synced = true;
            }
            Event::Apply(object) => {
                let uid = object.uid().unwrap_or_default();
                st.expected.remove(&uid);
                st.live.insert(uid, controlling_run(object), object.name_any(), object.view());
            }
            Event::Delete(object) => {
                let uid = object.uid().unwrap_or_default();
                st.expected.remove(&uid);
                st.live.remove(&uid);
                let now = Instant::now();
                st.deleted.retain(|_, at| now.duration_since(*at) < TOMBSTONE_FOR);
                st.deleted.insert(uid, now);
            }
        }
    }

    /// Whether the first listing is complete. Before it, an empty index
    /// means nothing: no run may be acted on.
    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// The run's objects, by name: those the watch has shown, and those this
    /// controller created that it has not shown yet.
    pub fn of(&self, run: &str) -> Vec<K::View> {
        let mut st = self.lock();
        let now = Instant::now();
        st.expected.retain(|_, (_, _, _, since)| now.duration_since(*since) < EXPECT_FOR);
        let mut found: BTreeMap<String, K::View> =
            st.live.by_run.get(run).into_iter().flatten().map(|(name, _, v)| (name.clone(), v.clone())).collect();
        for (owner, name, view, _) in st.expected.values() {
            if owner == run {
                found.entry(name.clone()).or_insert_with(|| view.clone());
            }
        }
        found.into_values().collect()
    }

    /// Remembers an object an API answer showed (a create's, a listing's),
    /// until the watch shows it, unless the watch showed it already or
    /// showed it deleted.
    pub fn expect(&self, object: &K) {
        let (Some(uid), Some(run)) = (object.uid(), controlling_run(object)) else { return };
        let mut st = self.lock();
        if !st.live.place.contains_key(&uid) && !st.deleted.contains_key(&uid) {
            st.expected.insert(uid, (run, object.name_any(), object.view(), Instant::now()));
        }
    }

    /// Changes what the index holds of the object with `uid` after this
    /// controller changed it (a delete, a patch), until the watch reports
    /// the change, so the same call is not made again meanwhile.
    pub fn amend(&self, uid: &str, change: impl FnOnce(&mut K::View)) {
        let mut st = self.lock();
        let Some((run, name)) = st.live.place.get(uid).cloned() else { return };
        if let Some((_, _, view)) = st.live.by_run.get_mut(&run).and_then(|o| o.iter_mut().find(|(n, _, _)| *n == name)) {
            change(view);
        }
    }

    /// How many objects the index holds.
    pub fn len(&self) -> usize {
        self.lock().live.place.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The pods and child runs of every run, from this controller's watches.
#[derive(Default)]
pub struct Cache {
    pub pods: Index<Pod>,
    pub children: Index<WorkflowInstance>,
}

impl Cache {
    /// What exists of the run with `uid`.
    pub fn observed(&self, uid: &str) -> Observed {
        Observed { pods: self.pods.of(uid), children: self.children.of(uid) }
    }

    /// The watches that have not listed everything once yet.
    pub fn listing(&self) -> Vec<&'static str> {
        [("pods", self.pods.synced()), ("child runs", self.children.synced())].into_iter().filter(|(_, s)| !s).map(|(w, _)| w).collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    use super::*;

    fn pod(name: &str, uid: &str, run: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(uid.into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "baton.dev/v1alpha1".into(),
                    kind: "WorkflowInstance".into(),
                    name: "r".into(),
                    uid: run.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            status: Some(k8s_openapi::api::core::v1::PodStatus { phase: Some(phase.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    fn names(index: &Index<Pod>, run: &str) -> Vec<(String, PodState)> {
        index.of(run).into_iter().map(|p| (p.name, p.state)).collect()
    }

    #[test]
    fn pods_are_found_by_the_uid_of_their_controlling_run() {
        let index = Index::<Pod>::default();
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("a", "1", "run-1", "Running")));
        index.apply(&Event::InitApply(pod("b", "2", "run-2", "Running")));
        let mut foreign = pod("c", "3", "run-1", "Running");
        foreign.metadata.owner_references.as_mut().unwrap()[0].kind = "Job".into();
        index.apply(&Event::InitApply(foreign));
        assert!(!index.synced());
        index.apply(&Event::InitDone);
        assert!(index.synced());
        assert_eq!(names(&index, "run-1"), [("a".to_string(), PodState::Running)]);
        index.apply(&Event::Apply(pod("a", "1", "run-1", "Succeeded")));
        assert_eq!(names(&index, "run-1"), [("a".to_string(), PodState::Succeeded)]);
        index.apply(&Event::Delete(pod("a", "1", "run-1", "Succeeded")));
        assert!(index.of("run-1").is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_relist_replaces_the_world_only_once_complete() {
        let index = Index::<Pod>::default();
        for e in [Event::Init, Event::InitApply(pod("a", "1", "run", "Running")), Event::InitDone] {
            index.apply(&e);
        }
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(pod("b", "2", "run", "Running")));
        // Until the listing is complete the old view serves.
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Running)]);
        index.apply(&Event::InitDone);
        assert_eq!(names(&index, "run"), [("b".to_string(), PodState::Running)]);
    }

    #[test]
    fn a_created_pod_counts_until_the_watch_shows_it() {
        let index = Index::<Pod>::default();
        index.apply(&Event::Init);
        index.apply(&Event::InitDone);
        index.expect(&pod("a", "1", "run", "Pending"));
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Waiting)]);
        index.apply(&Event::Apply(pod("a", "1", "run", "Running")));
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Running)]);
        // The watch already showed it: the (older) create answer changes nothing.
        index.expect(&pod("a", "1", "run", "Pending"));
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Running)]);
        // Deleted before the watch saw the create answer's pod: gone for good.
        index.expect(&pod("b", "2", "run", "Pending"));
        index.apply(&Event::Delete(pod("b", "2", "run", "Pending")));
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Running)]);
        // The watch showed it created and deleted before the create's answer
        // was taken in: the answer does not bring it back.
        index.apply(&Event::Apply(pod("c", "3", "run", "Pending")));
        index.apply(&Event::Delete(pod("c", "3", "run", "Pending")));
        index.expect(&pod("c", "3", "run", "Pending"));
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Running)]);
    }

    #[test]
    fn a_known_pod_counts_until_a_listing_begun_after_it_completes_without_it() {
        let index = Index::<Pod>::default();
        index.apply(&Event::Init);
        index.expect(&pod("a", "1", "run", "Running"));
        index.apply(&Event::InitDone);
        // Known after that listing began: it may have missed it.
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Running)]);
        index.apply(&Event::Init);
        index.apply(&Event::InitDone);
        assert!(index.of("run").is_empty(), "a later listing without it: gone");
    }

    #[test]
    fn an_object_moved_to_another_run_leaves_the_first() {
        let index = Index::<Pod>::default();
        index.apply(&Event::Apply(pod("a", "1", "run-1", "Running")));
        index.apply(&Event::Apply(pod("a", "1", "run-2", "Running")));
        assert!(index.of("run-1").is_empty());
        assert_eq!(index.of("run-2").len(), 1);
        let mut orphan = pod("a", "1", "run-2", "Running");
        orphan.metadata.owner_references = None;
        index.apply(&Event::Apply(orphan));
        assert!(index.of("run-2").is_empty() && index.is_empty());
    }

    #[test]
    fn a_namesake_replaces_the_pod_it_outlived_and_its_late_delete_changes_nothing() {
        let index = Index::<Pod>::default();
        index.apply(&Event::Apply(pod("a", "1", "run", "Running")));
        index.apply(&Event::Apply(pod("a", "2", "run", "Pending")));
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Waiting)]);
        index.apply(&Event::Delete(pod("a", "1", "run", "Running")));
        assert_eq!(names(&index, "run"), [("a".to_string(), PodState::Waiting)]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_finished_cleaned_up_run_is_cached_without_its_workflow_spec() {
        use crate::api::{CONDITION_CLEANED_UP, RunPhase, WorkflowInstanceStatus, WorkflowSpec};
        let mut run = WorkflowInstance::new("r", Default::default());
        run.status = Some(WorkflowInstanceStatus {
            phase: Some(RunPhase::Running),
            workflow_spec: Some(WorkflowSpec::default()),
            ..Default::default()
        });
        trim_run(&mut run);
        assert!(!without_spec(&run) && run.status.as_ref().unwrap().workflow_spec.is_some(), "a running run is kept whole");
        let status = run.status.as_mut().unwrap();
        status.phase = Some(RunPhase::Succeeded);
        crate::conditions::set(
            &mut status.conditions,
            CONDITION_CLEANED_UP,
            true,
            "NothingRunning",
            String::new(),
            None,
            crate::controller::now(),
        );
        trim_run(&mut run);
        assert!(without_spec(&run) && run.status.as_ref().unwrap().workflow_spec.is_none());
    }

    #[test]
    fn an_amended_pod_shows_the_change() {
        let index = Index::<Pod>::default();
        index.apply(&Event::Apply(pod("a", "1", "run", "Running")));
        index.amend("1", |p| p.deleting = true);
        assert!(index.of("run")[0].deleting);
    }
}
