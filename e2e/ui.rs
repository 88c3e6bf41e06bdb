//! `baton ui` in a real headless browser (Debian's chromium, driven through
//! chromedriver by WebDriver): the runs page, a diamond's graph whose
//! colours follow its tasks, its buttons (Pause, Resume, Stop, Retry), the
//! runs page's filters, a user whom RBAC refuses, the Workflows page as a
//! schedule ticks, the graph of a run of 1,000 tasks, and `--port`.

use std::time::Duration;

use baton::api::{RunPhase, Shutdown, Workflow, WorkflowInstance};
use fantoccini::{Client, Locator};
use kube::api::Api;

use crate::browser::{BIG_LAYERS, BIG_WIDTH, browser, free_port, start_big_run, start_ui, start_ui_with};
use crate::runs::{run, task, wait_phase, workflow};
use crate::support::{TestNs, kubeconfig, state_dir, wait_for};

/// Waits until `script` (a JavaScript expression) is true in the page.
async fn until(c: &Client, what: &str, script: &str) {
    let script = format!("return !!({script});");
    wait_for(what, Duration::from_secs(60), || async {
        match c.execute(&script, vec![]).await {
            Ok(serde_json::Value::Bool(true)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The phase each task node of the graph shows.
async fn node_phases(c: &Client) -> Vec<(String, String)> {
    let mut out = vec![];
    for node in c.find_all(Locator::Css("svg g.node")).await.unwrap() {
        out.push((node.attr("data-task").await.unwrap().unwrap_or_default(), node.attr("data-phase").await.unwrap().unwrap_or_default()));
    }
    out
}

#[tokio::test]
async fn the_ui_shows_a_live_diamond_and_stops_it() {
    let ns = TestNs::new("ui").await;
    let _c = ns.controller("alpha");
    let slow = |name: &str, deps: &[&str]| task(name, deps, "6s", 0, "");
    ns.apply(&workflow("dia", "", &[slow("a", &[]), slow("b", &["a"]), slow("c", &["a"]), task("d", &["b", "c"], "60s", 0, "")]));
    let (_ui, url) = start_ui(kubeconfig(), &ns.name);
    let (_driver, c) = browser().await;

    // The runs page lists a run created while it is open.
    c.goto(&format!("{url}#/runs")).await.unwrap();
    until(&c, "the runs page", "document.querySelector('#runs')").await;
    ns.apply(&run("dia-1", "dia", ""));
    until(&c, "the runs page to list dia-1", "document.querySelector('tr[data-run=\"dia-1\"] a')").await;
    c.find(Locator::Css("tr[data-run=\"dia-1\"] a")).await.unwrap().click().await.unwrap();
    until(&c, "the graph's four task nodes", "document.querySelectorAll('svg g.node').length === 4").await;

    // The colours follow the phases as they change, without a reload.
    until(&c, "task a to be shown Running", "document.querySelector('g.node[data-task=\"a\"]').dataset.phase === 'Running'").await;
    let first = node_phases(&c).await;
    assert_eq!(first.iter().filter(|(_, p)| p == "Pending").count(), 3, "{first:?}");
    until(
        &c,
        "a Succeeded and b, c Running",
        "['a','b','c'].map(t => document.querySelector(`g.node[data-task=\"${t}\"]`).dataset.phase).join() === 'Succeeded,Running,Running'",
    )
    .await;
    let fill = c.execute("return getComputedStyle(document.querySelector('g.node[data-task=\"a\"] rect')).fill", vec![]).await.unwrap();
    assert_eq!(fill, serde_json::json!("rgb(26, 127, 55)"), "a Succeeded node is green");
    until(&c, "d to be shown Running", "document.querySelector('g.node[data-task=\"d\"]').dataset.phase === 'Running'").await;
    until(
        &c,
        "the timeline to show the attempts' pods",
        "document.querySelector('.timeline') && document.querySelector('.timeline').textContent.includes('d #0')",
    )
    .await;
    until(
        &c,
        "the timeline to mark the owner's claim",
        "document.querySelector('.timeline').textContent.includes('epoch 1: alpha (Created)')",
    )
    .await;
    let shot = c.screenshot().await.unwrap();
    let dir = std::env::var_os("UI_SCREENSHOT_DIR").map_or_else(|| state_dir().join("screenshots"), std::path::PathBuf::from);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ui-run.png"), shot).unwrap();

    // Pause, then Resume: each a patch of the run's spec, as the CLI's.
    let api: Api<WorkflowInstance> = ns.api();
    c.find(Locator::Id("pause")).await.unwrap().click().await.unwrap();
    until(&c, "Resume to be offered once the page shows the pause", "!document.querySelector('#resume').disabled").await;
    assert!(api.get("dia-1").await.unwrap().spec.suspend, "Pause set spec.suspend");
    c.find(Locator::Id("resume")).await.unwrap().click().await.unwrap();
    until(&c, "Pause to be offered again", "!document.querySelector('#pause').disabled").await;
    assert!(!api.get("dia-1").await.unwrap().spec.suspend, "Resume cleared spec.suspend");

    c.find(Locator::Id("stop")).await.unwrap().click().await.unwrap();
    until(&c, "the page to show the run Stopped", "document.querySelector('#run-phase').dataset.phase === 'Stopped'").await;
    let stopped = api.get("dia-1").await.unwrap();
    assert_eq!(stopped.spec.shutdown, Shutdown::Stop);
    assert_eq!(stopped.status.unwrap().phase, Some(RunPhase::Stopped));
    assert!(c.find(Locator::Id("said")).await.unwrap().text().await.unwrap().contains("spec.shutdown=Stop"), "the page says what it asked");

    // Conditions as the API has them, and the Events of the requests.
    let types: Vec<String> = api.get("dia-1").await.unwrap().status.unwrap().conditions.into_iter().map(|c| c.type_).collect();
    assert!(!types.is_empty(), "a stopped run has conditions");
    let shown = format!(
        "(() => {{ const s = [...document.querySelectorAll('section')].find((x) => x.querySelector('h2')?.textContent === 'Conditions'); \
         return s && {}.every((t) => [...s.querySelectorAll('td')].some((td) => td.textContent === t)); }})()",
        serde_json::to_string(&types).unwrap()
    );
    until(&c, &format!("the conditions {types:?}"), &shown).await;
    until(
        &c,
        "the Events Paused, Resumed and Stopped",
        "['Paused', 'Resumed', 'Stopped'].every((r) => [...document.querySelectorAll('#events td')].some((td) => td.textContent === r))",
    )
    .await;

    // Retry of the stopped run: retryFailed one up, the stop withdrawn.
    until(&c, "Retry to be offered on the stopped run", "!document.querySelector('#retry').disabled").await;
    c.find(Locator::Id("retry")).await.unwrap().click().await.unwrap();
    until(&c, "the page to say it asked for a retry", "document.querySelector('#said').textContent.includes('retryFailed=1')").await;
    let retried = api.get("dia-1").await.unwrap().spec;
    assert_eq!((retried.retry_failed, retried.shutdown), (1, Shutdown::None), "Retry asked for one more round");

    // A task's page: its attempts and the log of its pod.
    c.find(Locator::Css("g.node[data-task=\"a\"]")).await.unwrap().click().await.unwrap();
    until(&c, "task a's log", "(document.querySelector('#log') || {}).textContent?.includes('simulated by kwok')").await;
    let attempts = c.find(Locator::Css("#attempts")).await.unwrap().text().await.unwrap();
    assert!(attempts.contains("attempt 0") && attempts.contains("dia-1-a-0") && attempts.contains("exit 0"), "{attempts}");

    // Workflows with their schedules.
    ns.apply(&workflow("nightly", "  schedule: {cron: \"0 2 * * *\", timeZone: Europe/Berlin}\n", &[task("a", &[], "1s", 0, "")]));
    c.goto(&format!("{url}#/workflows")).await.unwrap();
    until(
        &c,
        "the schedule's next tick",
        "[...document.querySelectorAll('#workflows td')].some(td => /^20\\d\\d-\\d\\d-\\d\\dT0[01]:00:00Z$/.test(td.textContent))",
    )
    .await;
    let table = c.find(Locator::Id("workflows")).await.unwrap().text().await.unwrap();
    assert!(table.contains("0 2 * * * (Europe/Berlin)") && table.contains("dia"), "{table}");

    // The runs page's filters: by workflow (in the address), by phase
    // (chosen in the page).
    ns.apply(&run("n-1", "nightly", ""));
    let (dia, nightly) = ("document.querySelector('tr[data-run=\"dia-1\"]')", "document.querySelector('tr[data-run=\"n-1\"]')");
    c.goto(&format!("{url}#/runs?workflow=nightly")).await.unwrap();
    until(&c, "only nightly's run listed", &format!("{nightly} && !{dia}")).await;
    c.goto(&format!("{url}#/runs")).await.unwrap();
    until(&c, "both runs listed", &format!("{nightly} && {dia}")).await;
    c.execute("const s = document.querySelector('#phase'); s.value = 'Running'; s.dispatchEvent(new Event('change'));", vec![])
        .await
        .unwrap();
    until(&c, "only the running run listed", &format!("location.hash.includes('phase=Running') && {dia} && !{nightly}")).await;
    c.close().await.unwrap();
    ns.done().await;
}

#[tokio::test]
async fn a_user_without_patch_rights_sees_the_refusal_in_the_page() {
    let ns = TestNs::new("ui-rbac").await;
    let _c = ns.controller("alpha");
    ns.apply(&workflow("slow", "", &[task("a", &[], "60s", 0, "")]));
    ns.apply(&run("s-1", "slow", ""));
    wait_phase(&ns, "s-1", |p| p == RunPhase::Running).await;
    let viewer = crate::cli::viewer_kubeconfig(&ns);
    let (_ui, url) = start_ui(&viewer, &ns.name);
    let (_driver, c) = browser().await;
    c.goto(&format!("{url}#/run/{}/s-1", ns.name)).await.unwrap();
    until(&c, "the run page", "document.querySelector('#pause') && !document.querySelector('#pause').disabled").await;
    c.find(Locator::Id("pause")).await.unwrap().click().await.unwrap();
    until(&c, "the refusal to be shown", "document.querySelector('#error').textContent.includes('cannot patch')").await;
    let message = c.find(Locator::Id("error")).await.unwrap().text().await.unwrap();
    assert!(message.contains("e2e-viewer") && message.contains("cannot patch"), "{message}");
    let api: Api<WorkflowInstance> = ns.api();
    assert!(!api.get("s-1").await.unwrap().spec.suspend, "nothing was changed");
    c.close().await.unwrap();
    ns.done().await;
}

/// Where the page drew a task's node, in CSS pixels.
#[derive(serde::Deserialize, Debug)]
struct Drawn {
    task: String,
    label: String,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    /// The label lies within the node's box.
    inside: bool,
    font: f64,
}

/// A run of 1,000 tasks is drawn as a layered graph a person can read:
/// every task a node at full size (the page scrolls, it never shrinks the
/// graph), each label whole and inside its node, no two nodes overlapping,
/// and each layer a column of its own to the right of the one it depends on.
#[tokio::test]
async fn a_run_of_a_thousand_tasks_is_a_readable_layered_graph() {
    let ns = TestNs::new("ui-big").await;
    let _c = ns.controller("alpha");
    start_big_run(&ns).await;
    let (_ui, url) = start_ui(kubeconfig(), &ns.name);
    let (_driver, c) = browser().await;
    c.goto(&format!("{url}#/run/{}/big-1", ns.name)).await.unwrap();
    let total = BIG_LAYERS * BIG_WIDTH;
    until(&c, "the graph's 1,000 nodes", &format!("document.querySelectorAll('svg g.node').length === {total}")).await;
    let scale = c
        .execute("const s = document.querySelector('.graph svg'); return s.getBoundingClientRect().width / s.width.baseVal.value;", vec![])
        .await
        .unwrap();
    assert_eq!(scale.as_f64(), Some(1.0), "drawn at full size");
    let drawn = c
        .execute(
            "return [...document.querySelectorAll('.graph svg g.node')].map((g) => { \
               const r = g.querySelector('rect').getBoundingClientRect(), text = g.querySelector('text'), t = text.getBoundingClientRect(); \
               return { task: g.dataset.task, label: text.textContent, x: r.left, y: r.top, w: r.width, h: r.height, \
                        inside: t.left >= r.left && t.right <= r.right && t.top >= r.top && t.bottom <= r.bottom, \
                        font: parseFloat(getComputedStyle(text).fontSize) }; });",
            vec![],
        )
        .await
        .unwrap();
    let drawn: Vec<Drawn> = serde_json::from_value(drawn).unwrap();
    assert_eq!(drawn.len(), total);
    for d in &drawn {
        assert!(d.label == d.task && d.inside && d.font >= 11.0 && d.w >= 100.0 && d.h >= 20.0, "{d:?}");
    }
    let overlap = |a: &Drawn, b: &Drawn| a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    for (i, a) in drawn.iter().enumerate() {
        if let Some(b) = drawn[i + 1..].iter().find(|b| overlap(a, b)) {
            panic!("{} and {} overlap: {a:?} {b:?}", a.task, b.task);
        }
    }
    let at = |l: usize, i: usize| drawn.iter().find(|d| d.task == format!("t{l}-{i}")).unwrap();
    for l in 0..BIG_LAYERS {
        for i in 0..BIG_WIDTH {
            assert_eq!(at(l, i).x, at(l, 0).x, "layer {l} is one column");
            if l > 0 {
                assert!(at(l, i).x > at(l - 1, i).x + at(l - 1, i).w, "t{l}-{i} right of what it depends on");
            }
        }
    }
    c.close().await.unwrap();
    ns.done().await;
}

/// The Workflows page follows a schedule as it ticks: its last tick, its
/// active run (a link to it) and the ticks missed while no controller ran,
/// as the Workflow's status has them.
#[tokio::test]
async fn the_workflows_page_follows_a_schedule_as_it_ticks() {
    let ns = TestNs::new("ui-ticks").await;
    let mut controller = ns.controller("alpha");
    let every2 = "  schedule: {cron: \"*/2 * * * * *\", concurrencyPolicy: Forbid}\n";
    ns.apply(&workflow("often", every2, &[task("a", &[], "300s", 0, "")]));
    let (_ui, url) = start_ui(kubeconfig(), &ns.name);
    let (_driver, c) = browser().await;
    c.goto(&format!("{url}#/workflows")).await.unwrap();
    let row = "[...document.querySelectorAll('#workflows tbody tr')].find((r) => r.cells[0].textContent === 'often')";
    let api: Api<Workflow> = ns.api();
    let status = wait_for("often's first run", Duration::from_secs(30), || async {
        let s = api.get("often").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        if s.active_runs.is_empty() { Err("no active run".to_string()) } else { Ok(s) }
    })
    .await;
    let active = &status.active_runs[0];
    until(
        &c,
        &format!("the active run {active}, linked"),
        &format!("{row}?.cells[6].querySelector('a')?.getAttribute('href') === '#/run/{}/{active}'", ns.name),
    )
    .await;
    until(&c, "a last tick", &format!("/^20\\d\\d-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ$/.test({row}?.cells[5].textContent)")).await;
    // (A first look later than a tick after the Workflow was made counts
    // that tick as missed: what matters is that the page says what the API does.)
    let before = api.get("often").await.unwrap().status.unwrap_or_default().missed_ticks;
    until(&c, &format!("{before} missed ticks shown"), &format!("{row}?.cells[7].textContent === '{before}'")).await;

    // Ticks pass while no controller runs: counted as missed once one is back.
    controller.kill();
    tokio::time::sleep(Duration::from_secs(7)).await;
    controller.restart();
    let missed = wait_for("the missed ticks to be counted", Duration::from_secs(30), || async {
        let s = api.get("often").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        if s.missed_ticks > before { Ok(s.missed_ticks) } else { Err(format!("still {}", s.missed_ticks)) }
    })
    .await;
    until(&c, &format!("{missed} missed ticks shown"), &format!("{row}?.cells[7].textContent === '{missed}'")).await;
    let last = api.get("often").await.unwrap().status.unwrap().last_schedule_time.unwrap().0.to_string();
    until(&c, &format!("the last tick {last}"), &format!("{row}?.cells[5].textContent === '{last}'")).await;
    c.close().await.unwrap();
    ns.done().await;
}

#[tokio::test]
async fn ui_listens_on_the_port_asked_for_and_says_when_it_is_taken() {
    let ns = TestNs::new("ui-port").await;
    let port = free_port().to_string();
    let (_ui, url) = start_ui_with(kubeconfig(), &ns.name, &["--port", &port]);
    assert!(url.starts_with(&format!("http://127.0.0.1:{port}/")), "{url}");
    crate::cli::refused(
        crate::cli::baton(&ns, &["ui", "--port", &port]),
        &[&format!("cannot listen on 127.0.0.1:{port}"), "pick another --port"],
    );
    ns.done().await;
}

/// One raw HTTP request to `baton ui`: the status, the headers (lower
/// case) and the body.
fn raw(url: &str, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.replace("ADDR", addr).as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head.to_lowercase(), body.to_string())
}

#[tokio::test]
async fn only_the_browser_with_the_printed_token_gets_in() {
    let ns = TestNs::new("ui-gate").await;
    let (_ui, url) = start_ui(kubeconfig(), &ns.name);
    let token = url.split("token=").nth(1).unwrap();
    let get = |path: &str, headers: &str| raw(&url, &format!("GET {path} HTTP/1.1\r\nHost: ADDR\r\n{headers}Connection: close\r\n\r\n"));
    let list = format!("/k8s/apis/baton.dev/v1alpha1/namespaces/{}/workflowinstances", ns.name);

    // Without the cookie: neither the page nor the API (another local user, another site).
    let (code, _, body) = get(&list, "");
    assert!(code == 403 && body.contains("open the URL that baton ui printed"), "{code} {body}");
    assert_eq!(get("/", "").0, 403);
    assert_eq!(get("/?token=guess", "").0, 403);
    // The printed URL sets the cookie and drops the token from the address.
    let (code, head, _) = get(&format!("/?token={token}"), "");
    assert!(code == 303 && head.contains("location: /\r\n"), "{code} {head}");
    assert!(head.contains(&format!("set-cookie: baton-ui={token}; path=/; httponly; samesite=strict")), "{head}");
    let cookie = format!("Cookie: baton-ui={token}\r\n");
    let (code, head, body) = get(&list, &cookie);
    assert!(code == 200 && body.contains("WorkflowInstanceList"), "{code} {body}");
    assert!(
        head.contains("x-frame-options: deny")
            && head.contains("frame-ancestors 'none'")
            && head.contains("x-content-type-options: nosniff"),
        "{head}"
    );
    assert!(!head.contains("audit-id") && !head.contains("x-kubernetes-pf"), "only the type of the API server's answer passes: {head}");

    // Another name for the server (DNS rebinding), reads it does not forward, requests without its header.
    let rebound = raw(&url, &format!("GET {list} HTTP/1.1\r\nHost: evil.example\r\n{cookie}Connection: close\r\n\r\n"));
    assert_eq!(rebound.0, 403);
    let (code, _, body) = get(&format!("/k8s/api/v1/namespaces/{}/secrets", ns.name), &cookie);
    assert!(code == 403 && body.contains("does not forward"), "{code} {body}");
    let post = |query: &str, headers: &str| {
        raw(&url, &format!("POST /ui/request?{query} HTTP/1.1\r\nHost: ADDR\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"))
    };
    let stop = format!("namespace={}&name=r&what=stop", ns.name);
    assert_eq!(post(&stop, &cookie).0, 403, "no X-Baton-UI header");
    assert_eq!(post(&stop, "X-Baton-UI: 1\r\n").0, 403, "no cookie");
    let (code, _, body) = post(&format!("namespace={}&name=x/../../secrets&what=stop", ns.name), &format!("{cookie}X-Baton-UI: 1\r\n"));
    assert!(code == 400 && body.contains("is not the name of a run"), "{code} {body}");
    ns.done().await;
}
