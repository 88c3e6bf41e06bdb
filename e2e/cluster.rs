//! The harness itself: a pod created with kubectl is scheduled to a fake
//! node and ends as its annotations say.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};

use crate::support::{TestNs, wait_for};

fn pod_yaml(name: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\n\
         spec:\n  restartPolicy: Never\n  containers: [{{name: main, image: busybox}}]\n"
    )
}

async fn final_phase(pods: &Api<Pod>, name: &str) -> (String, Option<i32>, String) {
    wait_for(&format!("pod {name} to finish"), Duration::from_secs(30), || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let status = pod.status.unwrap_or_default();
        let phase = status.phase.clone().unwrap_or_default();
        let code = status.container_statuses.iter().flatten().find_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code));
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" { Ok((phase, code, node)) } else { Err(phase) }
    })
    .await
}

#[tokio::test]
async fn fake_nodes_run_pods_as_their_annotations_say() {
    let ns = TestNs::new("cluster").await;
    let nodes = Api::<Node>::all(ns.client.clone()).list(&ListParams::default()).await.unwrap();
    assert!(nodes.items.len() >= 2, "at least two fake nodes");
    ns.apply(&pod_yaml("ok", ""));
    ns.apply(&pod_yaml("fails", "baton.dev/sim-exit-code: \"3\", baton.dev/sim-duration: 1s"));
    let pods: Api<Pod> = ns.api();
    let (phase, code, node) = final_phase(&pods, "ok").await;
    assert_eq!((phase.as_str(), code), ("Succeeded", Some(0)));
    assert!(node.starts_with("kwok-node-"), "scheduled to a fake node: {node}");
    let (phase, code, _) = final_phase(&pods, "fails").await;
    assert_eq!((phase.as_str(), code), ("Failed", Some(3)));
    ns.done().await;
}

/// The kernel's ephemeral range, from which outgoing connections take ports.
fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_else(|_| "32768 60999".into());
    let mut it = text.split_whitespace().map(|p| p.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// A second control plane, in its own state dir, loses its API server, and
/// another process takes that port before `e2e/cluster up` starts it again
/// (as an outgoing connection can): `up` sees the bind fail, picks a new
/// port outside the ephemeral range, and comes up, instead of reusing the
/// taken port until `down`.
#[test]
fn a_taken_port_gets_a_new_one_outside_the_ephemeral_range() {
    let (lo, hi) = ephemeral_range();
    let state = crate::support::state_dir().with_file_name(format!("e2e-ports-{}", std::process::id()));
    let cluster = |verb: &str| {
        let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/cluster"))
            .arg(verb)
            .env("BATON_E2E_STATE", &state)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let ports = || -> Vec<(String, u16)> {
        let text = std::fs::read_to_string(state.join("ports.env")).unwrap();
        text.lines().map(|l| l.split_once('=').unwrap()).map(|(n, p)| (n.to_string(), p.parse().unwrap())).collect()
    };
    let (ok, log) = cluster("up");
    assert!(ok, "e2e/cluster up failed:\n{log}");
    let api_port = ports().into_iter().find(|(n, _)| n == "API_PORT").unwrap().1;
    let pid = std::fs::read_to_string(state.join("pids/kube-apiserver.pid")).unwrap();
    std::process::Command::new("kill").arg("-9").arg(pid.trim()).status().unwrap();
    let held = (0..100)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            std::net::TcpListener::bind(("127.0.0.1", api_port)).ok()
        })
        .expect("take the API server's port");
    let (ok, log) = cluster("up");
    drop(held);
    let (down, _) = cluster("down");
    assert!(ok, "e2e/cluster up with the API server's port taken failed:\n{log}");
    assert!(down, "e2e/cluster down failed");
    assert!(log.contains(&format!("kube-apiserver: port {api_port} is taken; picking new ports")), "{log}");
    for (name, port) in ports() {
        assert!(port < lo || port > hi, "{name}={port} is inside the ephemeral range {lo}-{hi}");
        if name == "API_PORT" {
            assert_ne!(port, api_port);
        }
    }
    std::fs::remove_dir_all(&state).ok();
}
