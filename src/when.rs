//! A task's `when`: a CEL expression over `params`, `tasks`, `item` and
//! `run` that decides whether the task runs. Parsing (for validation),
//! finding what an expression reads (for validation, and for deciding which
//! task results the planner must keep) and evaluating it; no client, no
//! clock.
//!
//! The variables an expression sees:
//! - `params`: map of string to string, the run's parameters.
//! - `tasks`: map of task name to `{phase, outputs: {result, json}}`, holding
//!   only the tasks the caller puts in [`Vars::tasks`]. `result` is the
//!   task's result, `""` when it has none; `json` is that result parsed as
//!   JSON, or `null` when it is absent or not JSON.
//! - `item`: the fan-out item. Declared only
//!   for a fanned-out instance: elsewhere a reference to `item` fails at run
//!   time with CEL's "Undeclared reference to 'item'" (validation, through
//!   [`Refs::item`], normally refuses such an expression first).
//! - `run`: `{name, namespace, phase}`.
//!
//! JSON (`json`, `item`) becomes CEL's null, bool, string, list and map; a
//! number becomes an `int` when it is integral and fits, a `double`
//! otherwise, so that `item.count == 2` holds for `2` and `2.0` alike.
//!
//! The crate's parser and interpreter recurse once per level of nesting, and
//! in a debug build the parser takes over 100 KiB of stack per level of
//! parentheses: far more than a tokio worker's 2 MiB. So a parse runs on a
//! stack of its own, and so does an evaluation unless the caller's stack has
//! room to spare for the expression's depth (switching stacks costs more
//! than evaluating a typical expression). Sources longer than
//! [`MAX_SOURCE_BYTES`] are refused, which bounds how deep any expression
//! can nest (the parser itself refuses more than 96 levels of brackets). A
//! panic in the crate becomes an error, not a crash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};
use cel::objects::{Key, Map};
use cel::{Context, Env, ParseErrors, Program, Value};

/// The longest error text we hand out: it ends up in a status message and an
/// Event, where a screenful of parser output helps nobody.
const MAX_ERROR_CHARS: usize = 300;

/// The longest `when` accepted. Far more than a condition needs; it bounds
/// the nesting of a chain like `1 < 1 < 1 ...`, which the parser's own
/// bracket limit does not, and with it the stack a call can take.
pub const MAX_SOURCE_BYTES: usize = 4096;

/// The stack a call into the crate gets when it needs one of its own (mapped
/// on demand; only the pages touched cost memory). The worst 4 KiB sources
/// measured take about 3 MiB in a release build and 80 MiB in a debug build.
const STACK_BYTES: usize = 256 << 20;

/// The stack an evaluation or a drop may take, from the depth of the syntax
/// tree. Measured: about 1.7 KiB per level in a release build and 38 KiB in
/// a debug build; taken here 4 and 2.5 times over, plus room for turning the
/// variables into CEL values.
fn stack_needed(depth: usize) -> usize {
    let (base, per_level) = if cfg!(debug_assertions) { (1 << 20, 96 << 10) } else { (256 << 10, 8 << 10) };
    base + depth * per_level
}

/// A parsed `when` expression. Parsed once (validation reports a parse error
/// before a run starts) and evaluated whenever the task's dependencies are
/// satisfied.
pub struct When {
    source: String,
    /// `Some` until dropped: [`Drop`] takes it to free the syntax tree, as
    /// deep as the expression, where there is stack for it.
    program: Option<Program>,
    refs: Refs,
    /// Levels of the syntax tree, for [`stack_needed`].
    depth: usize,
}

impl Drop for When {
    fn drop(&mut self) {
        if let Some(program) = self.program.take() {
            let _ = guarded(Some(stack_needed(self.depth)), move || drop(program));
        }
    }
}

impl std::fmt::Debug for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("When").field(&self.source).finish()
    }
}

/// Most comprehensions (map, filter, all, exists, exists_one) nested in
/// one another's bodies. CEL has no loops otherwise and its inputs here are
/// small (results of at most a few KiB), so this bounds the work of any
/// `when`: there is no evaluation budget in the interpreter.
pub const MAX_NESTED_LOOPS: usize = 1;

/// Parses `source`. The error is one line that starts with the position of
/// the first problem ("line 1, column 12: Syntax error: ..."), short enough
/// for a condition message, because that is where the user reads it.
pub fn parse(source: &str) -> Result<When, String> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(format!("the expression is {} bytes long, more than the {MAX_SOURCE_BYTES} allowed", source.len()));
    }
    // What the parser needs is not known before it has run: always a stack
    // of its own.
    let parsed = guarded(None, || {
        Program::compile(source).map(|program| {
            let mut walk = Walk::default();
            walk.expr(program.expression());
            (program, walk.refs, walk.deepest, walk.deepest_loops)
        })
    });
    match parsed {
        Ok(Ok((_, _, _, loops))) if loops > MAX_NESTED_LOOPS => Err(format!(
            "macros such as map, filter, all and exists nest {loops} deep, at most {MAX_NESTED_LOOPS} are allowed: each level multiplies the work of evaluating it"
        )),
        Ok(Ok((program, refs, depth, _))) => Ok(When { source: source.to_string(), program: Some(program), refs, depth }),
        Ok(Err(errors)) => Err(describe_parse_errors(&errors)),
        Err(()) => Err("the CEL parser failed on this expression (internal error)".to_string()),
    }
}

/// Runs `f` where at least `stack` bytes of stack are left (on a stack of
/// its own if the caller's has less; always, for `None`: not known), turning
/// a panic into `Err`: the parser is generated code over a third-party
/// runtime, and an odd input must give an error, not take the controller
/// down. A stack that cannot be mapped is an `Err` too.
fn guarded<T>(stack: Option<usize>, f: impl FnOnce() -> T) -> Result<T, ()> {
    catch_unwind(AssertUnwindSafe(|| match stack {
        Some(needed) => stacker::maybe_grow(needed, needed.max(STACK_BYTES), f),
        None => stacker::grow(STACK_BYTES, f),
    }))
    .map_err(|_| ())
}

/// What an expression reads. Validation refuses references to tasks that
/// are not upstream, to `item` outside a fan-out, to `run` outside exit
/// tasks and to undeclared parameters; the planner keeps the results of the
/// tasks named here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    pub tasks: TaskRefs,
    pub item: bool,
    pub run: bool,
    /// Names read as `params.NAME` or `params['NAME']`; other uses of
    /// `params` (say `'x' in params`) are harmless, since every parameter
    /// has a value, and are not listed.
    pub params: BTreeSet<String>,
}

/// Which tasks an expression reads: the names it spells out, or, when it
/// uses `tasks` in a way that cannot be known before it runs (`tasks[x]`,
/// `tasks.exists(...)`, `size(tasks)`), any task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskRefs {
    Names(BTreeSet<String>),
    Any,
}

impl Default for TaskRefs {
    fn default() -> Self {
        TaskRefs::Names(BTreeSet::new())
    }
}

impl TaskRefs {
    /// Whether the expression may read task `name`: the planner puts only
    /// those in [`Vars::tasks`] and keeps only their results.
    pub fn may_read(&self, name: &str) -> bool {
        match self {
            TaskRefs::Names(names) => names.contains(name),
            TaskRefs::Any => true,
        }
    }

    fn add(&mut self, name: &str) {
        if let TaskRefs::Names(names) = self {
            names.insert(name.to_string());
        }
    }
}

/// The values an expression is evaluated against. Borrowed, because the
/// planner builds one per evaluation from the status it already holds.
#[derive(Clone, Debug)]
pub struct Vars<'a> {
    pub params: &'a BTreeMap<String, String>,
    /// Only the tasks the expression may read ([`TaskRefs::may_read`]); a
    /// task missing here is CEL's "No such key" error if read.
    pub tasks: BTreeMap<String, TaskVars<'a>>,
    /// The fan-out item; `None` outside a fan-out, and then `item` is not
    /// declared at all.
    pub item: Option<&'a serde_json::Value>,
    pub run: RunVars<'a>,
}

/// One task as `when` sees it: its phase and its result, if it has one.
#[derive(Clone, Copy, Debug)]
pub struct TaskVars<'a> {
    pub phase: &'a str,
    pub result: Option<&'a str>,
}

/// The run as `when` sees it; in exit tasks `phase` is the DAG's outcome.
#[derive(Clone, Copy, Debug)]
pub struct RunVars<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub phase: &'a str,
}

impl When {
    /// The expression as written, for the Event that quotes it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the expression reads, found in its syntax tree when it was
    /// parsed (see [`Refs`]).
    pub fn refs(&self) -> Refs {
        self.refs.clone()
    }

    /// Evaluates the expression. `Err` holds CEL's error on one line (a
    /// missing key, a division by zero, no overload for the operand types),
    /// or says that the expression gave something other than a bool; the
    /// caller fails the task with it.
    pub fn eval(&self, vars: &Vars) -> Result<bool, String> {
        // Only `drop` takes the program.
        let Some(program) = &self.program else { return Err("the expression is gone (internal error)".to_string()) };
        match guarded(Some(stack_needed(self.depth)), || execute(program, vars)) {
            Ok(Ok(Value::Bool(value))) => Ok(value),
            Ok(Ok(other)) => Err(format!("when must give a bool, got {}", other.type_of())),
            Ok(Err(error)) => Err(one_line(&error.to_string())),
            Err(()) => Err("the CEL interpreter failed on this expression (internal error)".to_string()),
        }
    }
}

/// `program` run against `vars`, which become CEL values here.
fn execute(program: &Program, vars: &Vars) -> cel::ResolveResult {
    let mut context = Context::with_env(stdlib());
    context.add_variable_from_value("params", string_map(vars.params));
    let tasks = vars.tasks.iter().map(|(name, task)| (name.as_str(), task_value(task)));
    context.add_variable_from_value("tasks", map(tasks));
    if let Some(item) = vars.item {
        context.add_variable_from_value("item", json_value(item));
    }
    let run =
        [("name", Value::from(vars.run.name)), ("namespace", Value::from(vars.run.namespace)), ("phase", Value::from(vars.run.phase))];
    context.add_variable_from_value("run", map(run));
    program.execute(&context)
}

/// CEL's standard functions and macros, built once: building them is most of
/// the cost of a fresh context.
fn stdlib() -> Arc<Env> {
    static STDLIB: OnceLock<Arc<Env>> = OnceLock::new();
    STDLIB.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

fn map<'k>(entries: impl IntoIterator<Item = (&'k str, Value)>) -> Value {
    let entries: HashMap<Key, Value> = entries.into_iter().map(|(k, v)| (Key::from(k), v)).collect();
    Value::Map(Map { map: Arc::new(entries) })
}

fn string_map(values: &BTreeMap<String, String>) -> Value {
    map(values.iter().map(|(k, v)| (k.as_str(), Value::from(v.as_str()))))
}

fn task_value(task: &TaskVars) -> Value {
    let result = task.result.unwrap_or("");
    let json =
        task.result.and_then(|result| serde_json::from_str::<serde_json::Value>(result).ok()).map_or(Value::Null, |json| json_value(&json));
    let outputs = map([("result", Value::from(result)), ("json", json)]);
    map([("phase", Value::from(task.phase)), ("outputs", outputs)])
}

/// A JSON value as a CEL value, as the module's documentation says.
fn json_value(json: &serde_json::Value) -> Value {
    use serde_json::Value as Json;
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            // i64::MAX as f64 is 2^63, itself out of range: hence `<`.
            (None, Some(f)) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => Value::Int(f as i64),
            (None, Some(f)) => Value::Float(f),
            (None, None) => Value::Null,
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(json_value).collect())),
        Json::Object(fields) => map(fields.iter().map(|(k, v)| (k.as_str(), json_value(v)))),
    }
}

/// The first parse error with its position, on one line, and how many more
/// there are.
fn describe_parse_errors(errors: &ParseErrors) -> String {
    let Some(first) = errors.errors.first() else {
        return "does not parse".to_string();
    };
    let mut message = first.msg.clone();
    // A parse the runtime aborted (the nesting limit, too many errors to
    // recover from) comes as "UNKNOWN" with the reason as its source.
    if let Some(source) = &first.source
        && message == "UNKNOWN"
    {
        message = source.to_string();
    }
    // The parser's nesting limit reaches us as the Debug text of its error.
    if let Some(start) = message.find("Recursion limit of") {
        let reason = &message[start..];
        message = format!("Syntax error: {}", reason.split('"').next().unwrap_or(reason));
    }
    let (line, column) = first.pos;
    let mut text = if line >= 1 { format!("line {line}, column {column}: {message}") } else { message };
    if errors.errors.len() > 1 {
        text.push_str(&format!(" (and {} more errors)", errors.errors.len() - 1));
    }
    one_line(&text)
}

/// `text` on one line (whitespace runs, newlines included, become one
/// space) and at most [`MAX_ERROR_CHARS`] characters.
fn one_line(text: &str) -> String {
    let mut out = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().count() > MAX_ERROR_CHARS
        && let Some((cut, _)) = out.char_indices().nth(MAX_ERROR_CHARS - 1)
    {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// The syntax-tree walk behind [`When::refs`], which also measures the
/// tree's depth. `bound` holds the variables of the comprehensions
/// (`exists`, `all`, `map`, `filter`) around the current node: inside
/// `[1].exists(item, item > 0)`, `item` is the comprehension's own, not the
/// fan-out item.
#[derive(Default)]
struct Walk {
    refs: Refs,
    bound: Vec<String>,
    depth: usize,
    deepest: usize,
    /// Comprehensions around the current node whose body it is in: each
    /// multiplies the work of what is inside.
    loops: usize,
    deepest_loops: usize,
}

impl Walk {
    fn free(&self, name: &str) -> bool {
        !self.bound.iter().any(|bound| bound == name)
    }

    /// `tasks.NAME` / `params.NAME` (also under `has()`) and `tasks['NAME']`
    /// / `params['NAME']`: a read of one known entry. Returns false when
    /// `root` is neither, or is bound.
    fn entry(&mut self, root: &IdedExpr, name: &str) -> bool {
        let Expr::Ident(root) = &root.expr else { return false };
        if !self.free(root) {
            return false;
        }
        match root.as_str() {
            "tasks" => self.refs.tasks.add(name),
            "params" => {
                self.refs.params.insert(name.to_string());
            }
            _ => return false,
        }
        true
    }

    fn ident(&mut self, name: &str) {
        if !self.free(name) {
            return;
        }
        match name {
            "tasks" => self.refs.tasks = TaskRefs::Any,
            "item" => self.refs.item = true,
            "run" => self.refs.run = true,
            _ => {}
        }
    }

    fn expr(&mut self, expr: &IdedExpr) {
        self.depth += 1;
        self.deepest = self.deepest.max(self.depth);
        self.node(expr);
        self.depth -= 1;
    }

    fn node(&mut self, expr: &IdedExpr) {
        match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => self.ident(name),
            Expr::Select(select) => {
                if !self.entry(&select.operand, &select.field) {
                    self.expr(&select.operand);
                }
            }
            Expr::Call(call) => {
                if call.func_name == operators::INDEX
                    && call.target.is_none()
                    && let [operand, index] = call.args.as_slice()
                    && let Expr::Literal(LiteralValue::String(key)) = &index.expr
                    && self.entry(operand, key.inner())
                {
                    return;
                }
                if let Some(target) = &call.target {
                    self.expr(target);
                }
                call.args.iter().for_each(|arg| self.expr(arg));
            }
            Expr::Comprehension(comprehension) => {
                self.expr(&comprehension.iter_range);
                self.expr(&comprehension.accu_init);
                let outer = self.bound.len();
                self.bound.push(comprehension.iter_var.clone());
                self.bound.extend(comprehension.iter_var2.clone());
                self.bound.push(comprehension.accu_var.clone());
                self.loops += 1;
                self.deepest_loops = self.deepest_loops.max(self.loops);
                self.expr(&comprehension.loop_cond);
                self.expr(&comprehension.loop_step);
                self.loops -= 1;
                self.expr(&comprehension.result);
                self.bound.truncate(outer);
            }
            Expr::List(list) => list.elements.iter().for_each(|element| self.expr(element)),
            Expr::Map(map) => map.entries.iter().for_each(|entry| self.entry_expr(&entry.expr)),
            Expr::Struct(fields) => fields.entries.iter().for_each(|entry| self.entry_expr(&entry.expr)),
        }
    }

    fn entry_expr(&mut self, entry: &EntryExpr) {
        match entry {
            EntryExpr::StructField(field) => self.expr(&field.value),
            EntryExpr::MapEntry(entry) => {
                self.expr(&entry.key);
                self.expr(&entry.value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn params() -> BTreeMap<String, String> {
        [("env", "prod"), ("region", "eu")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const RUN: RunVars<'static> = RunVars { name: "nightly-1", namespace: "jobs", phase: "Failed" };

    /// Evaluates `source` with `params()`, `tasks` (name, phase, result),
    /// the item and `RUN`.
    fn eval_with(source: &str, tasks: &[(&str, &str, Option<&str>)], item: Option<&serde_json::Value>) -> Result<bool, String> {
        let params = params();
        let vars = Vars {
            params: &params,
            tasks: tasks.iter().map(|&(name, phase, result)| (name.to_string(), TaskVars { phase, result })).collect(),
            item,
            run: RUN,
        };
        parse(source).expect("parses").eval(&vars)
    }

    fn eval(source: &str, tasks: &[(&str, &str, Option<&str>)]) -> Result<bool, String> {
        eval_with(source, tasks, None)
    }

    fn names(names: &[&str]) -> TaskRefs {
        TaskRefs::Names(names.iter().map(|n| n.to_string()).collect())
    }

    fn refs(source: &str) -> Refs {
        parse(source).expect("parses").refs()
    }

    #[test]
    fn design_examples_true_and_false() {
        let check = "tasks.check.outputs.result == 'ok' && params.env == 'prod'";
        assert_eq!(eval(check, &[("check", "Succeeded", Some("ok"))]), Ok(true));
        assert_eq!(eval(check, &[("check", "Succeeded", Some("nok"))]), Ok(false));
        // No result reads as "".
        assert_eq!(eval("tasks.check.outputs.result == ''", &[("check", "Failed", None)]), Ok(true));

        assert_eq!(eval("run.phase != 'Succeeded'", &[]), Ok(true));
        assert_eq!(eval("run.phase == 'Succeeded'", &[]), Ok(false));
        assert_eq!(eval("run.name == 'nightly-1' && run.namespace == 'jobs'", &[]), Ok(true));

        let gen_count = "tasks.gen.outputs.json.count >= 2";
        assert_eq!(eval(gen_count, &[("gen", "Succeeded", Some(r#"{"count": 3}"#))]), Ok(true));
        assert_eq!(eval(gen_count, &[("gen", "Succeeded", Some(r#"{"count": 1}"#))]), Ok(false));
        assert_eq!(eval(gen_count, &[("gen", "Succeeded", Some(r#"{"count": 2.0}"#))]), Ok(true));
        assert_eq!(eval("tasks.gen.phase == 'Succeeded'", &[("gen", "Succeeded", None)]), Ok(true));
    }

    #[test]
    fn item_of_each_kind() {
        let word = json!("shard-eu");
        assert_eq!(eval_with("item.size() > 3", &[], Some(&word)), Ok(true));
        assert_eq!(eval_with("size(item) > 8", &[], Some(&word)), Ok(false));
        assert_eq!(eval_with("item.startsWith('shard-')", &[], Some(&word)), Ok(true));

        let whole = json!(7);
        assert_eq!(eval_with("item > 3 && item % 2 == 1", &[], Some(&whole)), Ok(true));
        let fraction = json!(0.5);
        assert_eq!(eval_with("item < 1.0", &[], Some(&fraction)), Ok(true));

        let object = json!({"region": "eu", "replicas": 3, "tags": ["a", "b"], "canary": false, "note": null});
        let shard = "item.region == 'eu' && item.replicas > 2 && 'b' in item.tags && !item.canary && item.note == null";
        assert_eq!(eval_with(shard, &[], Some(&object)), Ok(true));
        assert_eq!(eval_with("has(item.zone)", &[], Some(&object)), Ok(false));
    }

    #[test]
    fn item_outside_a_fan_out_is_undeclared() {
        let error = eval("item == 'x'", &[]).unwrap_err();
        assert!(error.contains("item"), "{error}");
    }

    #[test]
    fn json_is_null_unless_the_result_is_json() {
        assert_eq!(eval("tasks.t.outputs.json == null", &[("t", "Succeeded", Some("ok"))]), Ok(true));
        assert_eq!(eval("tasks.t.outputs.json == null", &[("t", "Succeeded", None)]), Ok(true));
        assert_eq!(eval("tasks.t.outputs.json == 'eu'", &[("t", "Succeeded", Some("\"eu\""))]), Ok(true));
        assert_eq!(eval("tasks.t.outputs.json[1] == 'us'", &[("t", "Succeeded", Some(r#"["eu","us"]"#))]), Ok(true));
    }

    #[test]
    fn hyphenated_task_names_are_read_by_index() {
        let source = "tasks['list-shards'].outputs.json.size() == 2";
        assert_eq!(eval(source, &[("list-shards", "Succeeded", Some(r#"["eu","us"]"#))]), Ok(true));
    }

    #[test]
    fn parse_error_names_a_position() {
        let error = parse("tasks.check.outputs.result ==").unwrap_err();
        assert!(error.starts_with("line 1, column 30: "), "{error}");
        assert!(!error.contains('\n'), "{error}");

        let error = parse("params.env == 'prod' &&\n  (").unwrap_err();
        assert!(error.starts_with("line 2, column "), "{error}");

        let error = parse(&format!("{}1{}", "(".repeat(500), ")".repeat(500))).unwrap_err();
        assert!(!error.contains('\n') && error.chars().count() <= MAX_ERROR_CHARS, "{error}");
    }

    #[test]
    fn source_is_kept() {
        assert_eq!(parse(" run.phase == 'Failed' ").unwrap().source(), " run.phase == 'Failed' ");
    }

    #[test]
    fn refs_of_each_form() {
        assert_eq!(refs("tasks.a.outputs.result == 'x'").tasks, names(&["a"]));
        assert_eq!(refs("tasks['a-b'].phase == 'x' && tasks[\"c\"].phase == 'y'").tasks, names(&["a-b", "c"]));
        assert_eq!(refs("has(tasks.a) && has(tasks.b.outputs)").tasks, names(&["a", "b"]));
        assert_eq!(refs("params.env == 'prod'").tasks, names(&[]));

        for dynamic in [
            "tasks[params.name].phase == 'x'",
            "tasks.exists(t, t == 'a')",
            "size(tasks) > 0",
            "'a' in tasks",
            "tasks == {}",
            "tasks.a.phase == 'x' || tasks.size() > 1",
        ] {
            assert_eq!(refs(dynamic).tasks, TaskRefs::Any, "{dynamic}");
        }

        let r = refs("params.env == 'prod' && params['region'] == \"eu\" && params[run.name] == '' && 'x' in params");
        assert_eq!(r.params, ["env", "region"].into_iter().map(String::from).collect());
        assert!(r.run && !r.item);

        let r = refs("item.size > 3");
        assert!(r.item && !r.run && r.params.is_empty() && r.tasks == names(&[]));
        assert!(refs("[1, 2].exists(x, x == item)").item);
        assert!(refs("{'k': run.phase}.k == ''").run);
    }

    #[test]
    fn comprehension_variables_shadow() {
        let r = refs("[1, 2].exists(item, item > 1) && ['a'].all(tasks, tasks == 'a')");
        assert!(!r.item);
        assert_eq!(r.tasks, names(&[]));
        // The range itself is outside the comprehension.
        assert_eq!(refs("tasks.a.outputs.json.all(tasks, tasks > 0)").tasks, names(&["a"]));
    }

    #[test]
    fn may_read() {
        assert!(names(&["a"]).may_read("a"));
        assert!(!names(&["a"]).may_read("b"));
        assert!(TaskRefs::Any.may_read("b"));
    }

    #[test]
    fn run_time_errors_carry_cel_message() {
        let error = eval("tasks.x.outputs.json.missing == 1", &[("x", "Succeeded", Some("not json"))]).unwrap_err();
        assert!(!error.is_empty() && !error.contains('\n'), "{error}");

        let error = eval("1 / 0 == 1", &[]).unwrap_err();
        assert!(error.contains("ivision by zero"), "{error}");

        let error = eval("tasks.other.phase == 'Succeeded'", &[]).unwrap_err();
        assert!(error.contains("other"), "{error}");

        let error = eval("params.env > 1", &[]).unwrap_err();
        assert!(!error.is_empty(), "{error}");
    }

    #[test]
    fn a_non_bool_result_is_an_error() {
        assert_eq!(eval("params.env", &[]), Err("when must give a bool, got string".to_string()));
        assert_eq!(eval("1 + 1", &[]), Err("when must give a bool, got int".to_string()));
        assert_eq!(eval("tasks.t.outputs.json", &[("t", "Succeeded", None)]), Err("when must give a bool, got null".to_string()));
    }

    #[test]
    fn matches_is_available() {
        assert_eq!(eval("tasks.t.outputs.result.matches('^v[0-9]+$')", &[("t", "Succeeded", Some("v12"))]), Ok(true));
    }

    #[test]
    fn one_line_shortens() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
        let long = one_line(&"é".repeat(1000));
        assert_eq!(long.chars().count(), MAX_ERROR_CHARS);
        assert!(long.ends_with('…'));
        let exact = "é".repeat(MAX_ERROR_CHARS);
        assert_eq!(one_line(&exact), exact);
    }

    #[test]
    fn too_long_is_refused() {
        let long = format!("{}true", " ".repeat(MAX_SOURCE_BYTES));
        assert!(parse(&long).unwrap_err().contains("more than the 4096 allowed"));
        assert!(parse(&format!("{}true", " ".repeat(MAX_SOURCE_BYTES - 4))).is_ok());
    }

    #[test]
    fn nesting_limit_is_a_parse_error() {
        let error = parse(&format!("{}true{}", "(".repeat(200), ")".repeat(200))).unwrap_err();
        assert!(error.starts_with("line 1, column ") && error.contains("Recursion limit of 96 exceeded"), "{error}");
        assert!(!error.contains("OtherError"), "{error}");
    }

    /// The deepest expressions of each shape: chains that `MAX_SOURCE_BYTES`
    /// bounds, and nestings that the parser's limit of 96 bounds.
    fn deep_sources() -> Vec<String> {
        let fill = |head: &str, unit: &str, tail: &str| {
            let n = (MAX_SOURCE_BYTES - head.len() - tail.len()) / unit.len();
            format!("{head}{}{tail}", unit.repeat(n))
        };
        let nest = |open: &str, inner: &str, close: &str| format!("{}{inner}{}", open.repeat(95), close.repeat(95));
        vec![
            fill("", "1<", "1"),
            fill("", "1==", "1"),
            fill("", "1+", "1 == 1"),
            fill("", "1 in[1]in", "[true]"),
            fill("run", "[0]", ""),
            fill("run", ".a", ""),
            nest("(", "true", ")"),
            nest("[", "1", "]"),
            nest("{1:", "1", "}"),
            nest("size(", "1", ")"),
            nest("[1].exists(x, ", "[true]", ")"),
        ]
    }

    /// They parse, evaluate and drop on a thread with a small stack: the
    /// crate runs on its own.
    #[test]
    fn deep_expressions_fit_on_a_small_stack() {
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(|| {
                for source in deep_sources() {
                    assert!(source.len() <= MAX_SOURCE_BYTES);
                    match parse(&source) {
                        Ok(when) => {
                            let _ = eval_with(&source, &[], None);
                            drop(when);
                        }
                        Err(error) => assert!(!error.contains("internal error"), "{error}"),
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// On a caller's stack with `stack_needed` to spare, evaluation and drop
    /// stay on that stack, and that is enough: the estimate holds (in the
    /// profile the tests are built in).
    #[test]
    fn stack_needed_is_enough() {
        for source in deep_sources() {
            let Ok(when) = parse(&source) else { continue };
            let needed = stack_needed(when.depth);
            std::thread::Builder::new()
                .stack_size(needed + (256 << 10))
                .spawn(move || {
                    assert!(stacker::remaining_stack().is_some_and(|left| left > needed), "would not run in place");
                    let params = params();
                    let vars = Vars { params: &params, tasks: BTreeMap::new(), item: None, run: RUN };
                    let _ = when.eval(&vars);
                    drop(when);
                })
                .unwrap()
                .join()
                .unwrap();
        }
    }

    #[test]
    fn deeply_nested_macros_are_refused() {
        let l = "[1, 2, 3]";
        assert!(parse(&format!("{l}.exists(a, a == 2)")).is_ok());
        let two = format!("{l}.exists(a, {l}.exists(b, a == b))");
        let err = parse(&two).unwrap_err();
        assert!(err.contains("nest 2 deep, at most 1"), "{err}");
        assert!(parse(&format!("{l}.map(x, x).exists(a, a == 1)")).is_ok(), "a macro over a macro's result does not multiply");
    }

    #[test]
    fn depth_counts_levels() {
        assert_eq!(parse("true").unwrap().depth, 1);
        assert_eq!(parse("1 < 2").unwrap().depth, 2);
        assert_eq!(parse("(1 + 2) * 3 == 9").unwrap().depth, 4);
    }

    #[test]
    fn when_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<When>();
    }

    /// CEL-looking text: identifiers, operators and literals glued at random,
    /// so that many samples get past the lexer.
    fn cel_like() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just("tasks".to_string()),
            Just("params".to_string()),
            Just("item".to_string()),
            Just("run".to_string()),
            "[a-z]{1,3}",
            "-?[0-9]{1,20}(\\.[0-9]+)?u?",
            "'[a-z\\\\]{0,3}'",
            "\"[^\"]{0,3}\"",
            "b'[a-z]{0,2}'",
            Just("r'\\\\'".to_string()),
            prop::sample::select(vec![
                ".",
                "[",
                "]",
                "(",
                ")",
                "{",
                "}",
                ",",
                ":",
                "?",
                "==",
                "!=",
                "<",
                "<=",
                ">",
                ">=",
                "&&",
                "||",
                "!",
                "+",
                "-",
                "*",
                "/",
                "%",
                "in",
                "has(",
                ".exists(",
                ".all(",
                ".map(",
                ".filter(",
                ".exists_one(",
                "size(",
                "int(",
                "uint(",
                "double(",
                "string(",
                "bytes(",
                "dyn(",
                "type(",
                ".matches(",
                "null",
                "true",
                "false",
                " ",
                "[?",
                ".?",
                "`",
                "\\",
                "\n",
                "1e999",
                "0x",
                "-9223372036854775808",
            ])
            .prop_map(String::from),
        ];
        proptest::collection::vec(token, 0..24).prop_map(|tokens| tokens.concat())
    }

    fn try_everything(source: &str) {
        let item = json!({"a": [1, "b", null, 2.5], "c": {"d": true}});
        let params = params();
        let vars = Vars {
            params: &params,
            tasks: [
                ("a".to_string(), TaskVars { phase: "Succeeded", result: Some(r#"{"n": [1, 2]}"#) }),
                ("b".to_string(), TaskVars { phase: "Failed", result: None }),
            ]
            .into_iter()
            .collect(),
            item: Some(&item),
            run: RUN,
        };
        match parse(source) {
            Ok(when) => {
                let _ = when.refs();
                if let Err(error) = when.eval(&vars) {
                    assert!(!error.contains("internal error") && !error.contains('\n'), "{source:?}: {error}");
                }
            }
            Err(error) => {
                assert!(!error.contains("internal error") && !error.contains('\n'), "{source:?}: {error}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn parse_and_eval_never_panic_on_any_string(source in any::<String>()) {
            try_everything(&source);
        }

        #[test]
        fn parse_and_eval_never_panic_on_cel_like_text(source in cel_like()) {
            try_everything(&source);
        }
    }
}
