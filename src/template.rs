//! Templates in task texts (command, args, env values, `workflowRef.params`,
//! `withParam`): `{{params.NAME}}`, `{{tasks.T.outputs.result}}`,
//! `{{tasks.T.outputs.results}}`, `{{item}}`, `{{item.FIELD}}`,
//! `{{run.name}}`, `{{run.namespace}}`, `{{run.phase}}`. Finding them (for
//! validation) and substituting them (when a task's pod or child run is
//! built). Anything else in braces is left alone: it is not ours.

const OPEN: &str = "{{";
const CLOSE: &str = "}}";

/// One reference found in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ref<'a> {
    /// `{{params.NAME}}`
    Param(&'a str),
    /// `{{tasks.T.outputs.result}}`
    Result(&'a str),
    /// `{{tasks.T.outputs.results}}`: a fanned-out task's results as a JSON list.
    Results(&'a str),
    /// `{{item}}` (None) or `{{item.FIELD}}`.
    Item(Option<&'a str>),
    /// `{{run.name}}`, `{{run.namespace}}` or `{{run.phase}}`: the field.
    Run(&'a str),
    /// Starts like one of ours but is none of them (a typo): the expression.
    Malformed(&'a str),
}

/// Fields of `run` a template can read.
pub const RUN_FIELDS: [&str; 3] = ["name", "namespace", "phase"];

/// One `{{ ... }}` occurrence: its byte range in the text and the expression
/// inside, trimmed.
fn occurrences(text: &str) -> impl Iterator<Item = (std::ops::Range<usize>, &str)> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let start = from + text[from..].find(OPEN)?;
        let inner_start = start + OPEN.len();
        let end = inner_start + text[inner_start..].find(CLOSE)?;
        from = end + CLOSE.len();
        Some((start..from, text[inner_start..end].trim()))
    })
}

/// What an expression inside braces refers to; None when it is not ours.
fn classify(expr: &str) -> Option<Ref<'_>> {
    let (head, rest) = expr.split_once('.').map_or((expr, None), |(h, r)| (h, Some(r)));
    let name_ok = |s: &str| !s.is_empty() && !s.contains(char::is_whitespace);
    Some(match (head, rest) {
        ("params", Some(name)) if name_ok(name) && !name.contains('.') => Ref::Param(name),
        ("tasks", Some(rest)) => match rest.split('.').collect::<Vec<_>>()[..] {
            [task, "outputs", "result"] if name_ok(task) => Ref::Result(task),
            [task, "outputs", "results"] if name_ok(task) => Ref::Results(task),
            _ => Ref::Malformed(expr),
        },
        ("item", None) => Ref::Item(None),
        ("item", Some(field)) if name_ok(field) && !field.contains('.') => Ref::Item(Some(field)),
        ("run", Some(field)) if RUN_FIELDS.contains(&field) => Ref::Run(field),
        ("params" | "tasks" | "item" | "run", _) => Ref::Malformed(expr),
        _ => return None,
    })
}

/// The references in `text`, in order.
pub fn references(text: &str) -> impl Iterator<Item = Ref<'_>> {
    occurrences(text).filter_map(|(_, expr)| classify(expr))
}

/// Where substitution finds values.
pub trait Scope {
    fn param(&self, name: &str) -> Option<&str>;
    /// A task's result; for a fanned-out task, the JSON list of its
    /// instances' results in item order. None for an unknown task.
    fn result(&self, task: &str) -> Option<String>;
    fn item(&self) -> Option<&serde_json::Value>;
    fn run(&self, field: &str) -> Option<&str>;
}

/// How an item (or a field of it) appears in a text: a string as itself,
/// anything else as JSON.
pub fn render(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn value(r: Ref<'_>, scope: &dyn Scope) -> Result<String, String> {
    match r {
        Ref::Param(name) => scope.param(name).map(str::to_string).ok_or_else(|| format!("parameter {name:?} has no value")),
        Ref::Result(task) | Ref::Results(task) => scope.result(task).ok_or_else(|| format!("task {task:?} has no result here")),
        Ref::Item(field) => {
            let item = scope.item().ok_or("{{item}} is only defined in a task with withItems or withParam")?;
            match field {
                None => Ok(render(item)),
                Some(f) => match item.get(f) {
                    Some(v) if item.is_object() => Ok(render(v)),
                    _ if item.is_object() => Err(format!("item {} has no field {f:?}", excerpt(&item.to_string()))),
                    _ => Err(format!("{{{{item.{f}}}}}: item {} is not an object", excerpt(&item.to_string()))),
                },
            }
        }
        Ref::Run(field) => scope.run(field).map(str::to_string).ok_or_else(|| format!("{{{{run.{field}}}}} has no value here")),
        Ref::Malformed(expr) => Err(format!("{{{{{expr}}}}} is not a template baton knows")),
    }
}

/// The start of a long value, for messages.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    if text.len() <= MAX {
        return text.to_string();
    }
    let cut = (0..=MAX).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}...", &text[..cut])
}

/// Replaces every reference in `text` with its value. A reference without
/// a value is an error naming it; validation normally catches that earlier.
pub fn substitute(text: &str, scope: &dyn Scope) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (range, expr) in occurrences(text) {
        let Some(r) = classify(expr) else { continue };
        out.push_str(&text[last..range.start]);
        out.push_str(&value(r, scope)?);
        last = range.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Fixed {
        params: BTreeMap<String, String>,
        item: Option<serde_json::Value>,
    }

    impl Scope for Fixed {
        fn param(&self, name: &str) -> Option<&str> {
            self.params.get(name).map(String::as_str)
        }
        fn result(&self, task: &str) -> Option<String> {
            (task == "gen").then(|| "out".to_string())
        }
        fn item(&self) -> Option<&serde_json::Value> {
            self.item.as_ref()
        }
        fn run(&self, field: &str) -> Option<&str> {
            match field {
                "name" => Some("r1"),
                _ => None,
            }
        }
    }

    fn scope(pairs: &[(&str, &str)], item: Option<serde_json::Value>) -> Fixed {
        Fixed { params: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), item }
    }

    #[test]
    fn finds_every_kind_of_reference() {
        let text = "{{params.date}} {{ tasks.gen.outputs.result }} {{tasks.p.outputs.results}} {{item}} {{item.id}} {{run.phase}} {{other}} {{tasks.gen.output}}";
        let refs: Vec<_> = references(text).collect();
        assert_eq!(
            refs,
            [
                Ref::Param("date"),
                Ref::Result("gen"),
                Ref::Results("p"),
                Ref::Item(None),
                Ref::Item(Some("id")),
                Ref::Run("phase"),
                Ref::Malformed("tasks.gen.output"),
            ]
        );
    }

    #[test]
    fn unterminated_braces_are_not_references() {
        assert_eq!(references("echo {{params.date").count(), 0);
    }

    #[test]
    fn substitutes_every_reference() {
        let s = scope(&[("a", "1"), ("b", "2")], Some(serde_json::json!({"id": 7, "name": "eu"})));
        let out = substitute("{{params.a}}-{{ params.b }}-{{tasks.gen.outputs.result}}-{{item.id}}-{{item.name}}-{{run.name}}", &s);
        assert_eq!(out.unwrap(), "1-2-out-7-eu-r1");
        assert_eq!(substitute("{{item}}", &s).unwrap(), r#"{"id":7,"name":"eu"}"#);
        assert_eq!(substitute("{{item}}", &scope(&[], Some(serde_json::json!("us")))).unwrap(), "us");
    }

    #[test]
    fn leaves_foreign_expressions_alone() {
        assert_eq!(substitute("{{ x }} {{params.a}} {{.Values.y}}", &scope(&[("a", "v")], None)).unwrap(), "{{ x }} v {{.Values.y}}");
    }

    #[test]
    fn missing_values_are_errors_naming_them() {
        let s = scope(&[], Some(serde_json::json!("plain")));
        assert!(substitute("{{params.nope}}", &s).unwrap_err().contains("\"nope\""));
        assert!(substitute("{{item.id}}", &s).unwrap_err().contains("not an object"));
        assert!(substitute("{{item.id}}", &scope(&[], Some(serde_json::json!({"x": 1})))).unwrap_err().contains("no field \"id\""));
        assert!(substitute("{{item}}", &scope(&[], None)).unwrap_err().contains("withItems"));
        assert!(substitute("{{run.phase}}", &s).unwrap_err().contains("run.phase"));
    }

    #[test]
    fn excerpt_cuts_long_values_on_a_char_boundary() {
        let long = "é".repeat(100);
        let cut = excerpt(&long);
        assert!(cut.ends_with("...") && cut.len() < 90, "{cut}");
    }
}
