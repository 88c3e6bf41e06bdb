//! Validation speed on a generated 5,000-task DAG. Prints its figures; not
//! a timed test. Run with `make bench`.

use std::time::Instant;

use baton::api::{TaskSpec, WorkflowSpec};
use baton::dag;
use k8s_openapi::api::core::v1::Container;

/// A layered DAG: each task depends on up to three tasks of earlier layers.
fn generated(n: usize) -> WorkflowSpec {
    let tasks = (0..n)
        .map(|i| TaskSpec {
            name: format!("task-{i}"),
            depends_on: [1usize, 7, 50].iter().filter(|&&k| k <= i).map(|k| format!("task-{}", i - k)).collect(),
            container: Some(Container {
                name: "main".into(),
                image: Some("busybox".into()),
                command: Some(vec!["echo".into(), format!("step {i}")]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    WorkflowSpec { tasks, ..Default::default() }
}

fn main() {
    for n in [1_000, 5_000] {
        let spec = generated(n);
        let rounds = 20;
        let start = Instant::now();
        for _ in 0..rounds {
            assert!(dag::validate(&spec).is_empty());
        }
        let per = start.elapsed() / rounds;
        let dag = dag::Dag::new(&spec).unwrap();
        let phases = vec![dag::State::Pending; n];
        let start = Instant::now();
        let ready = dag.ready(&phases).count();
        let ready_time = start.elapsed();
        println!(
            "validate {n:>5} tasks: {:>8.3} ms per run ({rounds} runs); ready set ({ready} tasks) in {:.3} ms",
            per.as_secs_f64() * 1e3,
            ready_time.as_secs_f64() * 1e3
        );
    }
}
