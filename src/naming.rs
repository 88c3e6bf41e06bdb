//! Names of the objects a run creates. Deterministic, so that a retry, a new
//! owner or a late duplicate call lands on `AlreadyExists` instead of
//! creating a twin.

/// Longest name usable as a label value and a DNS label.
pub const MAX_NAME: usize = 63;
/// Hex digits of the hash suffix of a shortened name.
const HASH_DIGITS: usize = 10;

/// Task pod of `attempt` (from 0): `<run>-<task>-<attempt>`.
pub fn pod(run: &str, task: &str, attempt: i32) -> String {
    shorten(format!("{run}-{task}-{attempt}"))
}

/// Child run of a `workflowRef` task: `<run>-<task>`, `-<attempt>` added for
/// a retry.
pub fn child(run: &str, task: &str, attempt: i32) -> String {
    match attempt {
        0 => shorten(format!("{run}-{task}")),
        n => shorten(format!("{run}-{task}-{n}")),
    }
}

/// Name of one instance of a fanned-out task in `status.tasks`:
/// `<task>(<index>)`. Task names are DNS labels, so it is never a task's.
pub fn instance_key(task: &str, index: usize) -> String {
    format!("{task}({index})")
}

/// The task and index of an instance key; None for a task's own name.
pub fn parse_instance_key(key: &str) -> Option<(&str, usize)> {
    let (task, rest) = key.split_once('(')?;
    let index = rest.strip_suffix(')')?;
    (index.bytes().all(|b| b.is_ascii_digit()) && !index.is_empty()).then_some(())?;
    Some((task, index.parse().ok()?))
}

/// The task an entry of `status.tasks` belongs to: the task of an
/// instance, else the entry's own name.
pub fn task_of(key: &str) -> &str {
    parse_instance_key(key).map_or(key, |(task, _)| task)
}

/// What stands for the task in the pod and child names of an entry of
/// `status.tasks`: the task's name, or `<task>-<index>` for an instance.
pub fn object_part(key: &str) -> String {
    match parse_instance_key(key) {
        Some((task, index)) => format!("{task}-{index}"),
        None => key.to_string(),
    }
}

/// Run started by a schedule tick: `<workflow>-<unix seconds of the tick>`.
pub fn scheduled(workflow: &str, tick_unix_seconds: i64) -> String {
    shorten(format!("{workflow}-{tick_unix_seconds}"))
}

/// The value of a label that names an object (`baton.dev/instance`,
/// `baton.dev/parent`, `baton.dev/scheduled-by`): the name itself, shortened
/// like generated names when it is longer than a label value may be. Object
/// names may have 253 characters, label values 63.
pub fn label_value(name: &str) -> String {
    shorten(name.to_string())
}

/// Keeps names of at most [`MAX_NAME`] characters; longer ones become a
/// prefix and a hash of the whole name, so distinct names stay distinct.
pub fn shorten(name: String) -> String {
    if name.len() <= MAX_NAME {
        return name;
    }
    let keep = MAX_NAME - HASH_DIGITS - 1;
    let prefix = name[..keep].trim_end_matches(['-', '.']);
    format!("{prefix}-{:0width$x}", fnv1a(name.as_bytes()) >> (64 - 4 * HASH_DIGITS), width = HASH_DIGITS)
}

/// FNV-1a, 64 bits: stable across processes, machines and Rust versions.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys_round_trip_and_name_objects() {
        assert_eq!(instance_key("process", 12), "process(12)");
        assert_eq!(parse_instance_key("process(12)"), Some(("process", 12)));
        assert_eq!(parse_instance_key("process"), None);
        assert_eq!(parse_instance_key("process()"), None);
        assert_eq!(parse_instance_key("process(1x)"), None);
        assert_eq!(object_part("process(12)"), "process-12");
        assert_eq!(object_part("load"), "load");
        assert_eq!(pod("r", &object_part("process(3)"), 1), "r-process-3-1");
    }

    #[test]
    fn fixed_shapes() {
        assert_eq!(pod("etl-2026-01-01", "extract", 0), "etl-2026-01-01-extract-0");
        assert_eq!(child("etl-2026-01-01", "load", 0), "etl-2026-01-01-load");
        assert_eq!(child("etl-2026-01-01", "load", 2), "etl-2026-01-01-load-2");
        assert_eq!(scheduled("nightly", 1_767_232_800), "nightly-1767232800");
    }

    #[test]
    fn long_names_are_shortened_distinctly_and_stably() {
        let run = "a".repeat(50);
        let a = pod(&run, "some-long-task-name", 0);
        let b = pod(&run, "some-long-task-name", 1);
        assert_eq!(a.len(), MAX_NAME);
        assert_ne!(a, b);
        assert_eq!(a, pod(&run, "some-long-task-name", 0));
        assert!(a.starts_with(&run));
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }

    #[test]
    fn label_values_fit_whatever_the_name() {
        assert_eq!(label_value("etl-2026-01-01"), "etl-2026-01-01");
        let long = "x".repeat(200);
        assert_eq!(label_value(&long).len(), MAX_NAME);
        assert_ne!(label_value(&long), label_value(&"x".repeat(201)));
    }

    #[test]
    fn shortening_never_leaves_a_double_dash() {
        let name = format!("{}-{}", "x".repeat(51), "y".repeat(20));
        let short = shorten(name);
        assert!(!short.contains("--"), "{short}");
        assert!(short.len() <= MAX_NAME);
    }
}
