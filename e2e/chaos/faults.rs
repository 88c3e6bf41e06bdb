//! The faults: one at a time, at random intervals, from the seeded
//! generator. Each leaves the cluster whole again when it ends (the
//! controller restarted or thawed, the API server back).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::journal::Shared;
use crate::support::{ControllerProc, LEASE_DURATION, state_dir};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Kill,
    Freeze,
    Term,
    ApiRestart,
    ApiOutage,
}

impl Fault {
    pub const ALL: [Fault; 5] = [Fault::Kill, Fault::Freeze, Fault::Term, Fault::ApiRestart, Fault::ApiOutage];

    pub fn label(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9 + restart",
            Fault::Freeze => "SIGSTOP past lease + SIGCONT",
            Fault::Term => "SIGTERM + restart",
            Fault::ApiRestart => "kube-apiserver restart",
            Fault::ApiOutage => "kube-apiserver down past lease",
        }
    }
}

fn log(start: Instant, what: String) {
    println!("[chaos {:>6.1}s] {what}", start.elapsed().as_secs_f64());
}

/// Injects faults until `until`, then makes sure every controller runs.
/// Returns the controllers for the final checks.
pub async fn inject(
    mut controllers: Vec<ControllerProc>,
    journal: Shared,
    seed: u64,
    start: Instant,
    until: Instant,
) -> Vec<ControllerProc> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfa17);
    // Every kind once, in a random order, then a weighted random choice.
    let mut first: Vec<Fault> = Fault::ALL.to_vec();
    first.shuffle(&mut rng);
    let mut next = first.into_iter();
    tokio::time::sleep(Duration::from_secs(8)).await;
    loop {
        // Until every kind has happened once: shorter pauses, and no room
        // kept before the end, so that a short run has them all.
        let first_round = !next.as_slice().is_empty();
        let pause = Duration::from_millis(if first_round { rng.random_range(2_000..5_000) } else { rng.random_range(3_000..9_000) });
        let room = if first_round { Duration::ZERO } else { Duration::from_secs(10) };
        if Instant::now() + pause + room > until {
            break;
        }
        tokio::time::sleep(pause).await;
        let fault = next.next().unwrap_or_else(|| match rng.random_range(0..10) {
            0..3 => Fault::Kill,
            3..6 => Fault::Freeze,
            6..8 => Fault::Term,
            8 => Fault::ApiRestart,
            _ => Fault::ApiOutage,
        });
        let victim = rng.random_range(0..controllers.len());
        *journal.lock().unwrap().faults.entry(fault.label()).or_default() += 1;
        match fault {
            Fault::Kill => {
                let c = &mut controllers[victim];
                log(start, format!("kill -9 {}", c.identity));
                c.kill();
                journal.lock().unwrap().controller_down(&c.identity, Instant::now());
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..6_000))).await;
                log(start, format!("restart {}", c.identity));
                c.restart();
                journal.lock().unwrap().controller_up(&c.identity);
            }
            Fault::Freeze => {
                let c = &controllers[victim];
                let frozen = LEASE_DURATION + Duration::from_millis(rng.random_range(500..4_000));
                log(start, format!("SIGSTOP {} for {frozen:?}", c.identity));
                c.freeze();
                journal.lock().unwrap().controller_down(&c.identity, Instant::now());
                tokio::time::sleep(frozen).await;
                log(start, format!("SIGCONT {}", c.identity));
                c.thaw();
                journal.lock().unwrap().controller_up(&c.identity);
            }
            Fault::Term => {
                let c = &mut controllers[victim];
                log(start, format!("SIGTERM {}", c.identity));
                journal.lock().unwrap().controller_down(&c.identity, Instant::now());
                tokio::task::block_in_place(|| c.stop());
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..4_000))).await;
                log(start, format!("restart {}", c.identity));
                c.restart();
                journal.lock().unwrap().controller_up(&c.identity);
            }
            Fault::ApiRestart => {
                log(start, "restart kube-apiserver".into());
                journal.lock().unwrap().api_down();
                let ok = tokio::task::block_in_place(restart_apiserver);
                journal.lock().unwrap().api_up(Instant::now());
                log(start, format!("kube-apiserver back ({})", if ok { "healthy" } else { "FAILED" }));
                if !ok {
                    journal.lock().unwrap().breaks.push("suite: e2e/cluster restart kube-apiserver failed".into());
                }
            }
            Fault::ApiOutage => {
                let down = LEASE_DURATION + Duration::from_millis(rng.random_range(1_000..4_000));
                log(start, format!("stop kube-apiserver for {down:?} (the lease is {LEASE_DURATION:?})"));
                journal.lock().unwrap().api_down();
                let ok = tokio::task::block_in_place(|| apiserver_outage(down));
                journal.lock().unwrap().api_up(Instant::now());
                log(start, format!("kube-apiserver back ({})", if ok { "healthy" } else { "FAILED" }));
                if !ok {
                    journal
                        .lock()
                        .unwrap()
                        .breaks
                        .push("suite: stopping kube-apiserver or starting it again (e2e/cluster up) failed".into());
                }
            }
        }
    }
    controllers
}

pub(crate) fn cluster(args: &[&str]) -> bool {
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/cluster"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The local control plane's components whose process is gone (their pid
/// files in `target/e2e/pids`, which `e2e/cluster` writes for each
/// component it starts and removes when it stops one, name no live process).
pub(crate) fn dead_components() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(state_dir().join("pids")) else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".pid")?.to_string();
            let pid: i32 = std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
            (kill(Pid::from_raw(pid), None).is_err()).then_some(name)
        })
        .collect()
}

fn restart_apiserver() -> bool {
    cluster(&["restart", "kube-apiserver"])
}

/// Stops the API server as `e2e/cluster restart` does (SIGTERM, SIGKILL
/// after 3 s), keeps it down for `down`, then `e2e/cluster up` starts it
/// again on the same port with the same data.
fn apiserver_outage(down: Duration) -> bool {
    let pid_file = state_dir().join("pids/kube-apiserver.pid");
    let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<i32>().ok()) else { return false };
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while proc_dir.exists() {
        if Instant::now() > deadline {
            let _ = kill(pid, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(down);
    cluster(&["up"])
}
