//! `{{params.NAME}}` references: finding them (for validation) and
//! substituting them (when a task's pod or child run is built).

use std::collections::BTreeMap;

const OPEN: &str = "{{";
const CLOSE: &str = "}}";
const PREFIX: &str = "params.";

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

/// Names of the parameters `text` references. Expressions that are not
/// `params.NAME` are left alone (they are not ours to interpret).
pub fn references(text: &str) -> impl Iterator<Item = &str> {
    occurrences(text).filter_map(|(_, expr)| expr.strip_prefix(PREFIX))
}

/// Replaces every `{{params.NAME}}` with its value. A reference to a name
/// without a value is an error naming it; validation normally catches that
/// earlier.
pub fn substitute(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (range, expr) in occurrences(text) {
        let Some(name) = expr.strip_prefix(PREFIX) else { continue };
        let value = values.get(name).ok_or_else(|| format!("parameter {name:?} has no value"))?;
        out.push_str(&text[last..range.start]);
        out.push_str(value);
        last = range.end;
    }
    out.push_str(&text[last..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn finds_references_with_and_without_spaces() {
        let refs: Vec<_> = references("echo {{params.date}} {{ params.region }} {{other}}").collect();
        assert_eq!(refs, ["date", "region"]);
    }

    #[test]
    fn unterminated_braces_are_not_references() {
        assert_eq!(references("echo {{params.date").count(), 0);
    }

    #[test]
    fn substitutes_every_reference() {
        let out = substitute("{{params.a}}-{{ params.b }}-{{params.a}}", &values(&[("a", "1"), ("b", "2")]));
        assert_eq!(out.unwrap(), "1-2-1");
    }

    #[test]
    fn leaves_foreign_expressions_alone() {
        assert_eq!(substitute("{{ x }} {{params.a}}", &values(&[("a", "v")])).unwrap(), "{{ x }} v");
    }

    #[test]
    fn missing_value_is_an_error_naming_it() {
        let err = substitute("{{params.nope}}", &values(&[])).unwrap_err();
        assert!(err.contains("\"nope\""), "{err}");
    }
}
