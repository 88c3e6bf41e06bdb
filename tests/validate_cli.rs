//! `baton validate` accepts the samples and rejects each bad manifest under
//! `tests/invalid/` with the one-line message its `# expect:` comment names.

use std::path::{Path, PathBuf};
use std::process::Command;

fn baton(args: &[&Path]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_baton")).arg("validate").args(args).output().expect("runs baton")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn samples_are_valid() {
    let samples: Vec<PathBuf> = std::fs::read_dir(root().join("config/samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(samples.len() >= 3);
    let refs: Vec<&Path> = samples.iter().map(PathBuf::as_path).collect();
    let out = baton(&refs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn each_bad_manifest_gets_its_message() {
    let mut checked = 0;
    for entry in std::fs::read_dir(root().join("tests/invalid")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).expect("first line is # expect:");
        let out = baton(&[&path]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{}: {stdout}", path.display());
        assert!(
            stdout.lines().any(|l| l.contains(expect) && l.starts_with(&path.display().to_string())),
            "{}: expected a line containing {expect:?}, got:\n{stdout}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 9);
}

#[test]
fn unreadable_file_is_a_usage_error() {
    let out = baton(&[Path::new("/nonexistent/file.yaml")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: cannot read"));
}
