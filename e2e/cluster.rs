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
