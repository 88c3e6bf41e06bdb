//! The controller refuses lease timing that would make every renewal late,
//! before it talks to any API server, with one line that states the rule.

use std::process::Command;

#[test]
fn renew_interval_over_a_third_of_the_lease_is_refused_at_start() {
    for (lease, renew) in [("3s", "2s"), ("15s", "10s"), ("15s", "0s")] {
        let out = Command::new(env!("CARGO_BIN_EXE_baton-controller"))
            .args(["--lease-duration", lease, "--renew-interval", renew])
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{lease}/{renew}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("at most a third of --lease-duration"), "{stderr}");
    }
}
