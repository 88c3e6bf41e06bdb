//! The workflow graph: validation that the API server cannot do at apply time
//! (cycles, templates and `when` expressions, generated names, schedules,
//! references to other workflows),
//! and the ready set that drives execution. Pure: no client, no clock.
//!
//! The controller and `baton validate` call the same functions, so a manifest
//! that validates offline is one the controller accepts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::api::{TaskSpec, WorkflowSpec};
use crate::template::{self, Ref};
use crate::{schedule, when};

/// Most cycles reported for one workflow; a dense graph has too many to list.
const MAX_CYCLES_REPORTED: usize = 5;

/// One thing wrong with a workflow, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The task the problem is about, when there is one.
    pub task: Option<String>,
    pub message: String,
}

impl Problem {
    fn workflow(message: impl Into<String>) -> Self {
        Problem { task: None, message: message.into() }
    }
    fn task(task: &str, message: impl Into<String>) -> Self {
        Problem { task: Some(task.to_string()), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.task {
            Some(task) => write!(f, "task {task:?}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Joins problems into the one-line message of a condition or Event.
pub fn summarize(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// True when `name` is a DNS label (RFC 1123), as task names must be.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Where a task stands, as its dependants see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started.
    Pending,
    /// Started, not finished.
    Running,
    /// Finished so that dependants may run: succeeded, or skipped by its
    /// own `when` (or for want of items).
    Satisfied,
    /// Finished so that dependants can never run: failed, stopped, or
    /// skipped because a dependency did not succeed.
    Unsatisfied,
}

/// The task graph with names resolved to indices: the DAG's tasks, then the
/// exit tasks. Edges point from a task to the tasks it depends on.
#[derive(Debug, Clone)]
pub struct Dag {
    names: Vec<String>,
    deps: Vec<Vec<usize>>,
    /// Tasks at this index and after are exit tasks.
    exits_from: usize,
}

impl Dag {
    /// Builds the graph of a workflow's tasks and exit tasks, or returns
    /// every structural problem: names, duplicates, container/workflowRef,
    /// unknown, self or cross-group dependencies, cycles.
    pub fn new(spec: &WorkflowSpec) -> Result<Dag, Vec<Problem>> {
        let tasks: Vec<&TaskSpec> = spec.all_tasks().collect();
        let exits_from = spec.tasks.len();
        let mut problems = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(tasks.len());
        if spec.tasks.is_empty() {
            problems.push(Problem::workflow("the workflow has no tasks"));
        }
        for (i, task) in tasks.iter().enumerate() {
            if !is_dns_label(&task.name) {
                problems.push(Problem::task(
                    &task.name,
                    "name must be a DNS label: at most 63 lower-case letters, digits or '-', starting and ending with a letter or digit",
                ));
            }
            if index.insert(task.name.as_str(), i).is_some() {
                problems.push(Problem::task(&task.name, "duplicate task name (names are unique across tasks and onExit)"));
            }
            if task.with_items.is_some() && task.with_param.is_some() {
                // Not a CEL rule: withItems holds values of any type, which
                // CEL on the API server cannot see.
                problems.push(Problem::task(&task.name, "has both withItems and withParam; give at most one"));
            }
            match (&task.container, &task.workflow_ref) {
                (Some(_), Some(_)) => problems.push(Problem::task(&task.name, "has both container and workflowRef; give exactly one")),
                (None, None) => problems.push(Problem::task(&task.name, "has neither container nor workflowRef; give exactly one")),
                _ => {}
            }
        }
        let mut deps = Vec::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            let mut resolved = Vec::with_capacity(task.depends_on.len());
            let mut seen = BTreeSet::new();
            for dep in &task.depends_on {
                if !seen.insert(dep.as_str()) {
                    problems.push(Problem::task(&task.name, format!("lists dependency {dep:?} twice")));
                } else if *dep == task.name {
                    problems.push(Problem::task(&task.name, "depends on itself"));
                } else if let Some(&j) = index.get(dep.as_str()) {
                    match (i >= exits_from, j >= exits_from) {
                        (true, false) => problems.push(Problem::task(
                            &task.name,
                            format!("is an exit task and depends on {dep:?}, a task of the DAG; exit tasks run after the whole DAG and depend only on each other"),
                        )),
                        (false, true) => problems.push(Problem::task(
                            &task.name,
                            format!("depends on {dep:?}, an exit task; exit tasks run after the DAG, so nothing in it can wait for one"),
                        )),
                        _ => resolved.push(j),
                    }
                } else {
                    problems.push(Problem::task(&task.name, format!("depends on {dep:?}, which is not a task of this workflow")));
                }
            }
            deps.push(resolved);
        }
        let dag = Dag { names: tasks.iter().map(|t| t.name.clone()).collect(), deps, exits_from };
        for cycle in dag.cycles() {
            let path: Vec<&str> = cycle.iter().map(|&i| dag.names[i].as_str()).collect();
            problems.push(Problem::workflow(format!(
                "dependency cycle: {} -> {} (each task depends on the next)",
                path.join(" -> "),
                path[0]
            )));
        }
        if problems.is_empty() { Ok(dag) } else { Err(problems) }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, task: usize) -> &str {
        &self.names[task]
    }

    pub fn deps(&self, task: usize) -> &[usize] {
        &self.deps[task]
    }

    /// Whether task `task` is an exit task.
    pub fn is_exit(&self, task: usize) -> bool {
        task >= self.exits_from
    }

    /// Indices of the DAG's tasks (not the exit tasks).
    pub fn dag_tasks(&self) -> std::ops::Range<usize> {
        0..self.exits_from
    }

    /// Indices of the exit tasks.
    pub fn exit_tasks(&self) -> std::ops::Range<usize> {
        self.exits_from..self.len()
    }

    /// Every task that has ended before `task` may start: its dependencies,
    /// theirs, and so on; for an exit task also every task of the DAG.
    pub fn upstream(&self, task: usize) -> BTreeSet<usize> {
        let mut seen: BTreeSet<usize> = if self.is_exit(task) { self.dag_tasks().collect() } else { BTreeSet::new() };
        let mut todo = self.deps[task].clone();
        while let Some(t) = todo.pop() {
            if seen.insert(t) {
                todo.extend(&self.deps[t]);
            }
        }
        seen
    }

    /// Cycles found by one depth-first pass, each in dependency order,
    /// at most [`MAX_CYCLES_REPORTED`]. Iterative, so deep chains cannot
    /// overflow the stack.
    fn cycles(&self) -> Vec<Vec<usize>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let mut mark = vec![Mark::New; self.len()];
        let mut found = Vec::new();
        for root in 0..self.len() {
            if mark[root] != Mark::New {
                continue;
            }
            // (node, index of the next edge to follow)
            let mut path: Vec<(usize, usize)> = vec![(root, 0)];
            mark[root] = Mark::OnPath;
            while let Some(&mut (node, ref mut next)) = path.last_mut() {
                if let Some(&dep) = self.deps[node].get(*next) {
                    *next += 1;
                    match mark[dep] {
                        Mark::New => {
                            mark[dep] = Mark::OnPath;
                            path.push((dep, 0));
                        }
                        Mark::OnPath if found.len() < MAX_CYCLES_REPORTED => {
                            let start = path.iter().position(|&(n, _)| n == dep).expect("on path");
                            found.push(path[start..].iter().map(|&(n, _)| n).collect());
                        }
                        _ => {}
                    }
                } else {
                    mark[node] = Mark::Done;
                    path.pop();
                }
            }
        }
        found
    }

    /// Tasks whose dependencies are all satisfied while they are Pending.
    /// `states` is indexed like the tasks.
    pub fn ready<'a>(&'a self, states: &'a [State]) -> impl Iterator<Item = usize> + 'a {
        (0..self.len()).filter(move |&t| states[t] == State::Pending && self.deps[t].iter().all(|&d| states[d] == State::Satisfied))
    }

    /// Tasks that can never start: Pending, with a dependency that ended
    /// unsatisfied. They are to be skipped (reason UpstreamFailed).
    pub fn blocked<'a>(&'a self, states: &'a [State]) -> impl Iterator<Item = usize> + 'a {
        (0..self.len()).filter(move |&t| states[t] == State::Pending && self.deps[t].iter().any(|&d| states[d] == State::Unsatisfied))
    }
}

/// Every text of a task that may hold templates: command, args, env
/// values, child params, pod annotation values, withParam.
pub(crate) fn templated_texts(task: &TaskSpec) -> Vec<&str> {
    let mut texts = Vec::new();
    if let Some(c) = &task.container {
        texts.extend(c.command.iter().flatten().map(String::as_str));
        texts.extend(c.args.iter().flatten().map(String::as_str));
        texts.extend(c.env.iter().flatten().filter_map(|e| e.value.as_deref()));
    }
    if let Some(r) = &task.workflow_ref {
        texts.extend(r.params.values().map(String::as_str));
    }
    if let Some(meta) = task.pod_template.as_ref().and_then(|p| p.metadata.as_ref()) {
        texts.extend(meta.annotations.values().map(String::as_str));
    }
    texts.extend(task.with_param.as_deref());
    texts
}

/// Validates a workflow definition: the graph, parameter declarations,
/// templates, `when` expressions, fan-outs, generated names and the
/// schedule. Empty means valid.
pub fn validate(spec: &WorkflowSpec) -> Vec<Problem> {
    let dag = Dag::new(spec);
    let mut problems = dag.as_ref().err().cloned().unwrap_or_default();
    let mut declared = BTreeSet::new();
    for p in &spec.params {
        if !declared.insert(p.name.as_str()) {
            problems.push(Problem::workflow(format!("parameter {:?} is declared twice", p.name)));
        }
    }
    let index: HashMap<&str, usize> = spec.all_tasks().enumerate().map(|(i, t)| (t.name.as_str(), i)).collect();
    for (i, task) in spec.all_tasks().enumerate() {
        // Upstream is only known for a sound graph; without one, references
        // to tasks are not judged (the graph's problems come first).
        let refs = References {
            spec,
            task,
            is_exit: i >= spec.tasks.len(),
            declared: &declared,
            index: &index,
            upstream: std::cell::OnceCell::new(),
            dag: dag.as_ref().ok().map(|d| (d, i)),
        };
        problems.extend(refs.check());
    }
    problems.extend(name_collisions(spec));
    if let Some(s) = &spec.schedule {
        if let Err(e) = schedule::parse(s) {
            problems.push(Problem::workflow(e));
        }
        let missing: Vec<&str> = spec.params.iter().filter(|p| p.default.is_none()).map(|p| p.name.as_str()).collect();
        if !missing.is_empty() {
            problems.push(Problem::workflow(format!(
                "scheduled runs supply no parameters, but {} {} no default",
                missing.join(", "),
                if missing.len() == 1 { "has" } else { "have" }
            )));
        }
    }
    problems
}

/// What one task's templates and `when` may refer to.
struct References<'a> {
    spec: &'a WorkflowSpec,
    task: &'a TaskSpec,
    is_exit: bool,
    declared: &'a BTreeSet<&'a str>,
    index: &'a HashMap<&'a str, usize>,
    /// The graph and this task's index in it, when the graph is sound.
    dag: Option<(&'a Dag, usize)>,
    /// Worked out only for a task that reads another's result: most do not,
    /// and on a long chain it costs the chain's length.
    upstream: std::cell::OnceCell<BTreeSet<usize>>,
}

impl References<'_> {
    fn problem(&self, message: String) -> Problem {
        Problem::task(&self.task.name, message)
    }

    /// A reference to task `other`'s result, written `what`.
    fn task_ref(&self, other: &str, what: &str) -> Option<Problem> {
        let Some(&j) = self.index.get(other) else {
            return Some(self.problem(format!("{what} names {other:?}, which is not a task of this workflow")));
        };
        let (dag, i) = self.dag?;
        let upstream = self.upstream.get_or_init(|| dag.upstream(i));
        (!upstream.contains(&j)).then(|| {
            self.problem(format!(
                "{what} reads task {other:?}, which is not upstream of it: add {other:?} to dependsOn (directly or through another task)"
            ))
        })
    }

    fn param_ref(&self, name: &str, what: &str) -> Option<Problem> {
        (!self.declared.contains(name)).then(|| self.problem(format!("{what}, but the workflow declares no parameter {name:?}")))
    }

    fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        for text in templated_texts(self.task) {
            let in_with_param = self.task.with_param.as_deref() == Some(text);
            for r in template::references(text) {
                // One line per distinct mistake, however often it is repeated.
                if !seen.insert((r, in_with_param)) {
                    continue;
                }
                problems.extend(self.template_ref(r, in_with_param));
            }
        }
        if let Some(source) = &self.task.when {
            problems.extend(self.when(source));
        }
        problems
    }

    fn template_ref(&self, r: Ref<'_>, in_with_param: bool) -> Option<Problem> {
        match r {
            Ref::Param(name) => self.param_ref(name, &format!("references {{{{params.{name}}}}}")),
            Ref::Result(task) => self.task_ref(task, &format!("{{{{tasks.{task}.outputs.result}}}}")),
            Ref::Results(task) => self.task_ref(task, &format!("{{{{tasks.{task}.outputs.results}}}}")).or_else(|| {
                let fans_out = self.spec.task(task).is_some_and(TaskSpec::fans_out);
                (!fans_out).then(|| {
                    self.problem(format!(
                        "{{{{tasks.{task}.outputs.results}}}}: task {task:?} has no withItems or withParam; use {{{{tasks.{task}.outputs.result}}}}"
                    ))
                })
            }),
            Ref::Item(_) if in_with_param => Some(self.problem("withParam cannot use {{item}}: the items are what it yields".into())),
            Ref::Item(_) if !self.task.fans_out() => {
                Some(self.problem("uses {{item}}, but has no withItems or withParam".into()))
            }
            Ref::Item(Some(field)) => self.task.with_items.as_ref().and_then(|items| {
                let missing = items.iter().position(|item| item.get(field).is_none() || !item.is_object())?;
                Some(self.problem(format!("uses {{{{item.{field}}}}}, but item {missing} of withItems has no field {field:?}")))
            }),
            Ref::Item(None) => None,
            Ref::Run("phase") if !self.is_exit => Some(self.problem(
                "{{run.phase}} is only defined in exit tasks (onExit), where it is the DAG's outcome".into(),
            )),
            Ref::Run(_) => None,
            Ref::Malformed(expr) => Some(self.problem(format!(
                "{{{{{expr}}}}} is not a template baton knows; use params.NAME, tasks.T.outputs.result, tasks.T.outputs.results, item, item.FIELD, run.name, run.namespace or run.phase"
            ))),
        }
    }

    fn when(&self, source: &str) -> Vec<Problem> {
        let when = match when::parse(source) {
            Ok(w) => w,
            Err(e) => return vec![self.problem(format!("when does not parse: {e}"))],
        };
        let refs = when.refs();
        let mut problems = Vec::new();
        match &refs.tasks {
            when::TaskRefs::Names(names) => problems.extend(names.iter().filter_map(|t| self.task_ref(t, &format!("when (tasks.{t})")))),
            // Which results to keep, and that only upstream tasks are read,
            // must be known before the run: every task read is named.
            when::TaskRefs::Any => problems.push(self.problem(
                "when reads tasks without naming each task it reads; write tasks.NAME or tasks['NAME'] for every task it uses".into(),
            )),
        }
        if refs.item && !self.task.fans_out() {
            problems.push(self.problem("when uses item, but the task has no withItems or withParam".into()));
        }
        problems.extend(refs.params.iter().filter_map(|p| self.param_ref(p, &format!("when reads params.{p}"))));
        problems
    }
}
/// The parameter values of a run: what it supplies, else the defaults.
/// Every declared parameter needs a value; supplying an undeclared one is an
/// error too (most likely a typo).
pub fn resolve_params(spec: &WorkflowSpec, supplied: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Vec<Problem>> {
    let mut values = BTreeMap::new();
    let mut problems = Vec::new();
    for p in &spec.params {
        match supplied.get(&p.name).or(p.default.as_ref()) {
            Some(v) => {
                values.insert(p.name.clone(), v.clone());
            }
            None => problems.push(Problem::workflow(format!("parameter {:?} has no default and the run does not supply it", p.name))),
        }
    }
    for name in supplied.keys().filter(|n| !spec.params.iter().any(|p| &p.name == *n)) {
        problems.push(Problem::workflow(format!("the run supplies parameter {name:?}, which the workflow does not declare")));
    }
    if problems.is_empty() { Ok(values) } else { Err(problems) }
}

/// Looks for a chain of `workflowRef`s that leads from workflow `start` back
/// to itself. `refs` gives the workflows a workflow refers to, or `None` when
/// it does not exist (a missing workflow is reported elsewhere). Returns the
/// chain, starting and ending with `start`.
pub fn workflow_cycle<F>(start: &str, refs: F) -> Option<Vec<String>>
where
    F: Fn(&str) -> Option<Vec<String>>,
{
    // Depth-first with an explicit stack: a long chain of workflowRefs must
    // not overflow the controller's stack. Each frame is a workflow on the
    // path and the references of it still to try.
    let mut visited = BTreeSet::new();
    let mut stack: Vec<(String, std::vec::IntoIter<String>)> = vec![(start.to_string(), refs(start).unwrap_or_default().into_iter())];
    while let Some((_, pending)) = stack.last_mut() {
        let Some(next) = pending.next() else {
            stack.pop();
            continue;
        };
        if next == start {
            let mut path: Vec<String> = stack.into_iter().map(|(name, _)| name).collect();
            path.push(next);
            return Some(path);
        }
        if visited.insert(next.clone()) {
            let onward = refs(&next).unwrap_or_default().into_iter();
            stack.push((next, onward));
        }
    }
    None
}

/// Whether `s` is a number as baton writes one (no leading zero).
fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

/// Generated names that two tasks could share. Pods are named
/// `<run>-<task>-<attempt>`, child runs `<run>-<task>` and
/// `<run>-<task>-<attempt>`, and an instance of a fanned-out task puts
/// `<task>-<index>` where a task's name goes. So a task named like another
/// one's retry (`load` and `load-1`, both workflowRef), or like an instance
/// of a fanned-out task (`process` and `process-3` or `process-3-1`),
/// would make two objects share a name.
fn name_collisions(spec: &WorkflowSpec) -> Vec<Problem> {
    let tasks: BTreeMap<&str, &TaskSpec> = spec.all_tasks().map(|t| (t.name.as_str(), t)).collect();
    let mut problems = Vec::new();
    for (name, task) in &tasks {
        let mut base = *name;
        while let Some((head, _)) = base.rsplit_once('-') {
            base = head;
            let (Some(other), Some(suffix)) = (tasks.get(base), name.strip_prefix(base).and_then(|s| s.strip_prefix('-'))) else {
                continue;
            };
            let parts: Vec<&str> = suffix.split('-').collect();
            let numbers = parts.iter().all(|p| is_number(p));
            let problem = if other.fans_out() && numbers && parts.len() <= 2 {
                format!(
                    "its pods or child runs could have the names of the objects of an instance of task {base:?}, which fans out; rename one of them"
                )
            } else if other.workflow_ref.is_some() && task.workflow_ref.is_some() && numbers && parts.len() == 1 && suffix != "0" {
                format!("its child run would have the same name as the child run of attempt {suffix} of task {base:?}; rename one of them")
            } else {
                continue;
            };
            problems.push(Problem::task(name, problem));
        }
    }
    problems
}

/// The workflows a spec's tasks refer to, in task order, without repeats.
pub fn referenced_workflows(spec: &WorkflowSpec) -> Vec<String> {
    let mut seen = BTreeSet::new();
    spec.all_tasks().filter_map(|t| t.workflow_ref.as_ref()).filter(|r| seen.insert(r.name.clone())).map(|r| r.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ParamSpec, Schedule, TaskWorkflowRef};
    use k8s_openapi::api::core::v1::{Container, EnvVar};
    use proptest::prelude::*;

    fn container_task(name: &str, deps: &[&str]) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            container: Some(Container { name: "main".into(), image: Some("busybox".into()), ..Default::default() }),
            ..Default::default()
        }
    }

    fn spec(tasks: Vec<TaskSpec>) -> WorkflowSpec {
        WorkflowSpec { tasks, ..Default::default() }
    }

    fn messages(spec: &WorkflowSpec) -> Vec<String> {
        validate(spec).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn diamond_is_valid_and_ready_follows_dependencies() {
        let tasks =
            vec![container_task("a", &[]), container_task("b", &["a"]), container_task("c", &["a"]), container_task("d", &["b", "c"])];
        assert!(validate(&spec(tasks.clone())).is_empty());
        let dag = Dag::new(&spec(tasks)).unwrap();
        use State::*;
        let mut states = vec![Pending; 4];
        assert_eq!(dag.ready(&states).collect::<Vec<_>>(), [0]);
        states[0] = Satisfied;
        assert_eq!(dag.ready(&states).collect::<Vec<_>>(), [1, 2]);
        states[1] = Satisfied;
        states[2] = Running;
        assert_eq!(dag.ready(&states).count(), 0);
        states[2] = Unsatisfied;
        assert_eq!(dag.blocked(&states).collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn cycle_is_named_in_order() {
        let m = messages(&spec(vec![
            container_task("start", &[]),
            container_task("a", &["start", "c"]),
            container_task("b", &["a"]),
            container_task("c", &["b"]),
        ]));
        assert_eq!(m, ["dependency cycle: a -> c -> b -> a (each task depends on the next)"]);
    }

    #[test]
    fn missing_and_self_dependencies() {
        let m = messages(&spec(vec![container_task("a", &["a"]), container_task("b", &["nope"])]));
        assert_eq!(m, ["task \"a\": depends on itself", "task \"b\": depends on \"nope\", which is not a task of this workflow"]);
    }

    #[test]
    fn duplicate_and_malformed_names() {
        let m = messages(&spec(vec![container_task("a", &[]), container_task("a", &[]), container_task("Bad_Name", &[])]));
        assert!(m.contains(&"task \"a\": duplicate task name (names are unique across tasks and onExit)".to_string()), "{m:?}");
        assert!(m.iter().any(|l| l.starts_with("task \"Bad_Name\": name must be a DNS label")), "{m:?}");
    }

    #[test]
    fn exactly_one_of_container_or_workflow_ref() {
        let mut both = container_task("both", &[]);
        both.workflow_ref = Some(TaskWorkflowRef { name: "other".into(), ..Default::default() });
        let mut neither = container_task("neither", &[]);
        neither.container = None;
        let m = messages(&spec(vec![both, neither]));
        assert_eq!(
            m,
            [
                "task \"both\": has both container and workflowRef; give exactly one",
                "task \"neither\": has neither container nor workflowRef; give exactly one"
            ]
        );
    }

    #[test]
    fn unknown_param_references_in_command_args_env_and_child_params() {
        let mut t = container_task("t", &[]);
        let c = t.container.as_mut().unwrap();
        c.command = Some(vec!["echo {{params.date}} {{params.nope}}".into()]);
        c.args = Some(vec!["{{ params.alsonope }}".into()]);
        c.env = Some(vec![EnvVar { name: "X".into(), value: Some("{{params.envnope}}".into()), ..Default::default() }]);
        let mut child = container_task("child", &[]);
        child.container = None;
        child.workflow_ref =
            Some(TaskWorkflowRef { name: "w".into(), params: [("p".to_string(), "{{params.childnope}}".to_string())].into() });
        let mut s = spec(vec![t, child]);
        s.params = vec![ParamSpec { name: "date".into(), default: Some("x".into()), ..Default::default() }];
        let m = messages(&s);
        assert_eq!(m.len(), 4, "{m:?}");
        assert!(m[1].contains("{{params.alsonope}}") && m[1].starts_with("task \"t\""), "{m:?}");
        assert!(m.iter().any(|l| l.contains("{{params.childnope}}")), "{m:?}");
    }

    #[test]
    fn bad_schedule_and_scheduled_params_without_default() {
        let mut s = spec(vec![container_task("a", &[])]);
        s.params = vec![ParamSpec { name: "p".into(), ..Default::default() }];
        s.schedule = Some(Schedule { cron: "not a cron".into(), ..Default::default() });
        let m = messages(&s);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].starts_with("schedule.cron \"not a cron\" does not parse"), "{m:?}");
        assert!(m[1].contains("p has no default"), "{m:?}");
    }

    #[test]
    fn run_params_need_values_and_must_be_declared() {
        let mut s = spec(vec![container_task("a", &[])]);
        s.params = vec![
            ParamSpec { name: "with_default".into(), default: Some("d".into()), ..Default::default() },
            ParamSpec { name: "required".into(), ..Default::default() },
        ];
        let err = resolve_params(&s, &[("typo".to_string(), "x".to_string())].into()).unwrap_err();
        let m: Vec<String> = err.iter().map(ToString::to_string).collect();
        assert_eq!(
            m,
            [
                "parameter \"required\" has no default and the run does not supply it",
                "the run supplies parameter \"typo\", which the workflow does not declare"
            ]
        );
        let ok = resolve_params(&s, &[("required".to_string(), "r".to_string())].into()).unwrap();
        assert_eq!(ok, [("required".to_string(), "r".to_string()), ("with_default".to_string(), "d".to_string())].into());
    }

    #[test]
    fn workflow_reference_cycles() {
        let graph: BTreeMap<&str, Vec<&str>> = [("a", vec!["b"]), ("b", vec!["c", "x"]), ("c", vec!["a"]), ("d", vec!["b"])].into();
        let refs = |w: &str| graph.get(w).map(|v| v.iter().map(|s| s.to_string()).collect());
        assert_eq!(workflow_cycle("a", refs).unwrap(), ["a", "b", "c", "a"]);
        assert_eq!(workflow_cycle("d", refs), None, "d reaches a cycle but not itself");
        let self_ref = |_: &str| Some(vec!["s".to_string()]);
        assert_eq!(workflow_cycle("s", self_ref).unwrap(), ["s", "s"]);
    }

    #[test]
    fn a_long_reference_chain_does_not_overflow_the_stack() {
        let n = 200_000;
        let refs = |w: &str| {
            let i: usize = w[1..].parse().unwrap();
            Some(if i + 1 < n { vec![format!("w{}", i + 1)] } else { vec!["w0".to_string()] })
        };
        let chain = workflow_cycle("w0", refs).unwrap();
        assert_eq!((chain.len(), chain[0].as_str(), chain[n].as_str()), (n + 1, "w0", "w0"));
        let open = |w: &str| {
            let i: usize = w[1..].parse().unwrap();
            Some(if i + 1 < n { vec![format!("w{}", i + 1)] } else { vec![] })
        };
        assert_eq!(workflow_cycle("w0", open), None);
    }

    fn child_task(name: &str) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            workflow_ref: Some(TaskWorkflowRef { name: "sub".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn child_runs_that_would_share_a_name_are_refused() {
        let m = messages(&spec(vec![child_task("load"), child_task("load-1"), child_task("load-0"), child_task("load-x")]));
        assert_eq!(
            m,
            ["task \"load-1\": its child run would have the same name as the child run of attempt 1 of task \"load\"; rename one of them"]
        );
        // Pods always end in the attempt, so container tasks cannot collide.
        assert!(messages(&spec(vec![container_task("load", &[]), container_task("load-1", &[])])).is_empty());
        assert!(messages(&spec(vec![container_task("load", &[]), child_task("load-1")])).is_empty());
    }

    /// Every name a run's objects get, for a few attempts, is distinct
    /// whenever validation accepts the workflow.
    #[test]
    fn accepted_workflows_generate_distinct_names() {
        let names = ["a", "a-1", "a-2", "a-10", "b", "a-b", "b-1", "a-1-1"];
        for mask in 0u32..(1 << names.len()) {
            for kinds in [0u32, mask, !0] {
                let tasks: Vec<TaskSpec> = names
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(i, n)| if kinds & (1 << i) != 0 { child_task(n) } else { container_task(n, &[]) })
                    .collect();
                if tasks.is_empty() || !validate(&spec(tasks.clone())).is_empty() {
                    continue;
                }
                let mut seen = BTreeSet::new();
                for t in &tasks {
                    for attempt in 0..12 {
                        let name = if t.workflow_ref.is_some() {
                            format!("child/{}", crate::naming::child("r", &t.name, attempt))
                        } else {
                            format!("pod/{}", crate::naming::pod("r", &t.name, attempt))
                        };
                        assert!(seen.insert(name.clone()), "{name} twice in {:?}", tasks.iter().map(|t| &t.name).collect::<Vec<_>>());
                    }
                }
            }
        }
    }

    fn commanded(name: &str, deps: &[&str], command: &str) -> TaskSpec {
        let mut t = container_task(name, deps);
        t.container.as_mut().unwrap().command = Some(vec![command.into()]);
        t
    }

    /// Every new kind of mistake in data and control flow, one line each.
    #[test]
    fn flow_mistakes_are_one_line_each() {
        let mut when_bad = container_task("w", &["a"]);
        when_bad.when = Some("tasks.a.outputs.result ==".into());
        let mut when_far = container_task("w2", &["a"]);
        when_far.when = Some("tasks.b.outputs.result == 'x'".into());
        let mut items_field = commanded("f", &[], "echo {{item.region}}");
        items_field.with_items = Some(vec![serde_json::json!({"region": "eu"}), serde_json::json!({"zone": "b"})]);
        let mut both_exit = container_task("e2", &["a"]);
        both_exit.name = "e2".into();
        let s = WorkflowSpec {
            tasks: vec![
                container_task("a", &[]),
                commanded("b", &["a"], "echo {{tasks.c.outputs.result}}"),
                commanded("c", &[], "echo {{tasks.a.outputs.results}} {{item}} {{run.phase}} {{tasks.a.output}}"),
                when_bad,
                when_far,
                items_field,
            ],
            on_exit: vec![commanded("e1", &[], "echo {{run.phase}} {{tasks.b.outputs.result}}"), both_exit],
            ..Default::default()
        };
        let m = messages(&s);
        let expect = [
            "task \"e2\": is an exit task and depends on \"a\", a task of the DAG; exit tasks run after the whole DAG and depend only on each other",
            "task \"c\": {{tasks.a.outputs.results}}: task \"a\" has no withItems or withParam; use {{tasks.a.outputs.result}}",
            "task \"c\": uses {{item}}, but has no withItems or withParam",
            "task \"c\": {{run.phase}} is only defined in exit tasks (onExit), where it is the DAG's outcome",
            "task \"c\": {{tasks.a.output}} is not a template baton knows; use params.NAME, tasks.T.outputs.result, tasks.T.outputs.results, item, item.FIELD, run.name, run.namespace or run.phase",
            "task \"f\": uses {{item.region}}, but item 1 of withItems has no field \"region\"",
        ];
        for e in expect {
            assert!(m.contains(&e.to_string()), "missing {e:?} in {m:#?}");
        }
        // With the graph sound again, upstream is judged too.
        let mut s2 = s.clone();
        s2.on_exit.pop();
        let m = messages(&s2);
        for e in [
            "task \"b\": {{tasks.c.outputs.result}} reads task \"c\", which is not upstream of it: add \"c\" to dependsOn (directly or through another task)",
            "task \"w2\": when (tasks.b) reads task \"b\", which is not upstream of it: add \"b\" to dependsOn (directly or through another task)",
            "task \"c\": {{tasks.a.outputs.results}} reads task \"a\", which is not upstream of it: add \"a\" to dependsOn (directly or through another task)",
        ] {
            assert!(m.contains(&e.to_string()), "missing {e:?} in {m:#?}");
        }
        assert!(m.iter().any(|l| l.starts_with("task \"w\": when does not parse: ")), "{m:#?}");
        assert!(!m.iter().any(|l| l.starts_with("task \"e1\"")), "exit tasks read every DAG task and run.phase: {m:#?}");
    }

    #[test]
    fn fanned_out_instance_names_cannot_collide() {
        let mut p = container_task("process", &[]);
        p.with_items = Some(vec![1.into()]);
        let m = messages(&spec(vec![
            p.clone(),
            container_task("process-3", &[]),
            container_task("process-3-1", &[]),
            container_task("process-x", &[]),
        ]));
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m.iter().all(|l| l.contains("an instance of task \"process\", which fans out")), "{m:?}");
        let mut exit = WorkflowSpec { tasks: vec![p], ..Default::default() };
        exit.on_exit = vec![container_task("process-0", &[])];
        assert_eq!(messages(&exit).len(), 1, "exit tasks share the names");
    }

    /// A random DAG: task i may depend only on tasks with a smaller index.
    fn random_dag() -> impl Strategy<Value = Vec<TaskSpec>> {
        (1usize..40).prop_flat_map(|n| {
            proptest::collection::vec(proptest::collection::vec(any::<prop::sample::Index>(), 0..4), n).prop_map(|deps| {
                deps.iter()
                    .enumerate()
                    .map(|(i, picks)| {
                        let mut names: Vec<String> =
                            if i == 0 { vec![] } else { picks.iter().map(|p| format!("t{}", p.index(i))).collect() };
                        names.sort();
                        names.dedup();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        container_task(&format!("t{i}"), &refs)
                    })
                    .collect()
            })
        })
    }

    proptest! {
        /// Whatever finished, the ready set never holds a task with an
        /// unfinished (or unsuccessful) dependency.
        #[test]
        fn ready_tasks_have_satisfied_dependencies(tasks in random_dag(), seed in proptest::collection::vec(0u8..4, 40)) {
            let dag = Dag::new(&spec(tasks)).unwrap();
            let all = [State::Pending, State::Running, State::Satisfied, State::Unsatisfied];
            let states: Vec<State> = (0..dag.len()).map(|i| all[seed[i] as usize]).collect();
            for t in dag.ready(&states) {
                prop_assert_eq!(states[t], State::Pending);
                for &d in dag.deps(t) {
                    prop_assert_eq!(states[d], State::Satisfied);
                }
            }
        }

        /// Running ready tasks to success, one wave at a time, finishes every
        /// task of an acyclic graph (the shuffled order proves the wiring,
        /// not the declaration order, decides).
        #[test]
        fn every_task_becomes_ready(mut tasks in random_dag(), rotate in 0usize..40) {
            let n = tasks.len();
            tasks.rotate_left(rotate % n);
            let dag = Dag::new(&spec(tasks)).unwrap();
            let mut states = vec![State::Pending; n];
            for _ in 0..=n {
                let wave: Vec<usize> = dag.ready(&states).collect();
                if wave.is_empty() { break; }
                for t in wave { states[t] = State::Satisfied; }
            }
            prop_assert!(states.iter().all(|p| *p == State::Satisfied));
        }

        /// Adding a back edge to a chain always yields a cycle report.
        #[test]
        fn back_edge_is_reported_as_cycle(n in 2usize..30, from in 0usize..30) {
            let from = from % n;
            let mut tasks: Vec<TaskSpec> = (0..n).map(|i| {
                let dep = if i == 0 { vec![] } else { vec![format!("t{}", i - 1)] };
                let refs: Vec<&str> = dep.iter().map(String::as_str).collect();
                container_task(&format!("t{i}"), &refs)
            }).collect();
            tasks[from].depends_on.push(format!("t{}", n - 1));
            tasks[from].depends_on.dedup();
            let problems = Dag::new(&spec(tasks)).unwrap_err();
            prop_assert!(problems.iter().any(|p| p.message.starts_with("dependency cycle") || p.message == "depends on itself"));
        }
    }
}
