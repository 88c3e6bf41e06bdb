//! The harness itself: a pod created with kubectl is scheduled to a fake
//! node and ends as its annotations say, and its log is what kwok serves
//! for every simulated container.

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, LogParams};

use crate::support::{TestNs, state_dir, wait_for};

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

/// The lines every simulated container logs: the file `e2e/cluster up`
/// writes for kwok, without the CRI prefix (`<time> stdout F `).
fn simulated_log() -> Vec<String> {
    let file = state_dir().join("kwok/pod.log");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    text.lines().map(|l| l.splitn(4, ' ').nth(3).unwrap_or_else(|| panic!("not a CRI log line: {l:?}")).to_string()).collect()
}

#[tokio::test]
async fn simulated_pods_log_through_the_api_server() {
    let ns = TestNs::new("cluster-logs").await;
    let expected = simulated_log();
    assert!(expected.first().is_some_and(|l| l.starts_with("simulated by kwok")), "the simulated log: {expected:?}");
    ns.apply(&pod_yaml("running", "baton.dev/sim-duration: 8s"));
    ns.apply(&pod_yaml("failed", "baton.dev/sim-exit-code: \"2\""));
    let pods: Api<Pod> = ns.api();

    // Followed while Running: the lines arrive over the open stream.
    wait_for("pod running to be Running", Duration::from_secs(30), || async {
        let phase = pods.get("running").await.map_err(|e| e.to_string())?.status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Running" { Ok(()) } else { Err(phase) }
    })
    .await;
    let follow = LogParams { follow: true, ..LogParams::default() };
    let mut lines = pods.log_stream("running", &follow).await.expect("follow the log of a running pod").lines();
    let mut followed = Vec::new();
    while followed.len() < expected.len() {
        match tokio::time::timeout(Duration::from_secs(20), lines.next()).await {
            Ok(Some(line)) => followed.push(line.expect("read the followed log")),
            Ok(None) => panic!("the followed log ended early: {followed:?}"),
            Err(_) => panic!("no line within 20s while following; so far {followed:?}"),
        }
    }
    assert_eq!(followed, expected);
    drop(lines);

    // Finished (either way): `kubectl logs` and the client read the same.
    let (phase, _, _) = final_phase(&pods, "running").await;
    assert_eq!(phase, "Succeeded");
    let (phase, code, _) = final_phase(&pods, "failed").await;
    assert_eq!((phase.as_str(), code), ("Failed", Some(2)));
    for name in ["running", "failed"] {
        assert_eq!(ns.kubectl(&["logs", name], None).lines().collect::<Vec<_>>(), expected, "kubectl logs {name}");
        assert_eq!(pods.logs(name, &LogParams::default()).await.expect("pod log").lines().collect::<Vec<_>>(), expected, "log of {name}");
    }
    let last = LogParams { tail_lines: Some(1), container: Some("main".into()), ..LogParams::default() };
    assert_eq!(pods.logs("failed", &last).await.expect("tail of the log").trim_end(), expected.last().unwrap());
    ns.done().await;
}
