// baton ui: pages over the API server, reached through `baton ui`'s proxy
// at /k8s with the user's own credentials. No framework and no build step:
// the file is compiled into the binary as it is.
'use strict';

const GROUP = '/apis/baton.dev/v1alpha1';
const TERMINAL = ['Succeeded', 'Failed', 'Stopped'];
const $ = (sel, el = document) => el.querySelector(sel);

/** An element: attributes (on* are listeners) and children (strings or nodes). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) el.append(c instanceof Node ? c : String(c));
  return el;
}

/** An SVG element. */
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== undefined && c !== null) el.append(c instanceof Node ? c : String(c));
  return el;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const enc = encodeURIComponent;

function showError(message) {
  const box = $('#error');
  box.textContent = message || '';
  box.hidden = !message;
}

function setLive(on) {
  $('#live').textContent = on ? '● live' : '○ reconnecting';
}

/** A request to the API server through the proxy; throws the API server's message. Logs come back as text. */
async function api(path, opts = {}) {
  const r = await fetch('/k8s' + path, { ...opts, headers: { Accept: 'application/json', ...(opts.headers || {}) } });
  const text = await r.text();
  let body = text;
  if (!opts.text || !r.ok) {
    try { body = JSON.parse(text); } catch (_) { /* plain text */ }
  }
  if (!r.ok) {
    const err = new Error((body && body.message) || text || r.statusText);
    err.code = r.status;
    throw err;
  }
  return body;
}

/** What leaves the current page: aborts its watches. */
let leaving = [];
function leave() {
  leaving.forEach((f) => f());
  leaving = [];
}

/**
 * Lists `path`, then watches it from the list's resourceVersion, keeping
 * `items` (by namespace/name) current; calls `changed(items)` after each
 * change, at most once per animation frame. Relists after an error,
 * which `failed` shows (the page's banner unless the caller says where).
 */
function live(path, changed, failed = (e) => showError(e.message)) {
  const items = new Map();
  const ctl = new AbortController();
  let closed = false;
  let queued = false;
  let failures = 0;
  leaving.push(() => { closed = true; ctl.abort(); });
  const notify = () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; if (!closed) changed(items); });
  };
  const key = (o) => `${o.metadata.namespace || ''}/${o.metadata.name}`;
  (async () => {
    while (!closed) {
      try {
        const list = await api(path, { signal: ctl.signal });
        if (failures) failed({ message: '' });
        failures = 0;
        items.clear();
        for (const o of list.items) items.set(key(o), o);
        notify();
        const sep = path.includes('?') ? '&' : '?';
        const r = await fetch(`/k8s${path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${list.metadata.resourceVersion}`, { signal: ctl.signal });
        if (!r.ok) throw Object.assign(new Error((await r.json()).message), { code: r.status });
        setLive(true);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl);
            buf = buf.slice(nl + 1);
            if (!line.trim()) continue;
            const ev = JSON.parse(line);
            if (ev.type === 'ADDED' || ev.type === 'MODIFIED') items.set(key(ev.object), ev.object);
            else if (ev.type === 'DELETED') items.delete(key(ev.object));
            else if (ev.type === 'ERROR') throw new Error(ev.object.message);
            else continue;
            notify();
          }
        }
      } catch (e) {
        if (closed) return;
        setLive(false);
        if (e.code) failed(e);
        // Backs off to 30 s, as client-go's reflector does.
        failures += 1;
        await sleep(Math.min(30000, 500 * 2 ** failures));
      }
    }
  })();
}

// ------------------------------------------------------------------ helpers --

function age(t) {
  if (!t) return '-';
  return human((Date.now() - Date.parse(t)) / 1000);
}

function span(start, end) {
  if (!start) return '-';
  return human(((end ? Date.parse(end) : Date.now()) - Date.parse(start)) / 1000);
}

/** kubectl's short durations. */
function human(sec) {
  const x = Math.max(0, Math.floor(sec));
  if (x < 120) return `${x}s`;
  if (x < 600) return `${Math.floor(x / 60)}m${x % 60}s`;
  if (x < 10800) return `${Math.floor(x / 60)}m`;
  if (x < 28800) return `${Math.floor(x / 3600)}h${Math.floor((x % 3600) / 60)}m`;
  if (x < 172800) return `${Math.floor(x / 3600)}h`;
  return `${Math.floor(x / 86400)}d`;
}

const phaseOf = (run) => (run.status && run.status.phase) || 'Pending';
/** Whether the run with `uid` is the object's controller: only then is the object the run's (DESIGN, Identity rules). */
const controlledBy = (obj, uid) => (obj.metadata.ownerReferences || []).some((o) => o.controller && o.uid === uid);
const badge = (phase) => h('span', { class: `phase phase-${phase}` }, phase);
const runPath = (ns, name) => `${GROUP}/namespaces/${enc(ns)}/workflowinstances/${enc(name)}`;

let config = { namespace: 'default' };

// -------------------------------------------------------------------- runs --

function runsPage(query) {
  const ns = query.has('ns') ? query.get('ns') : config.namespace;
  const filters = { workflow: query.get('workflow') || '', phase: query.get('phase') || '' };
  const nsInput = h('input', { id: 'ns', placeholder: 'all namespaces', value: ns, list: 'namespaces' });
  const wfInput = h('input', { id: 'workflow', placeholder: 'workflow', value: filters.workflow });
  const phaseSelect = h('select', { id: 'phase' }, h('option', { value: '' }, 'any phase'),
    ...['Pending', 'Running', 'Paused', 'Succeeded', 'Failed', 'Stopped'].map((p) => h('option', { value: p, selected: p === filters.phase }, p)));
  const body = h('tbody');
  const apply = () => {
    const q = new URLSearchParams({ ns: nsInput.value.trim(), workflow: wfInput.value.trim(), phase: phaseSelect.value });
    location.hash = `#/runs?${q}`;
  };
  nsInput.addEventListener('change', apply);
  wfInput.addEventListener('change', apply);
  phaseSelect.addEventListener('change', apply);
  $('#page').replaceChildren(
    h('h1', {}, 'Runs'),
    h('div', { class: 'filters' }, h('label', {}, 'Namespace ', nsInput), h('datalist', { id: 'namespaces' }), h('label', {}, 'Workflow ', wfInput), h('label', {}, 'Phase ', phaseSelect)),
    h('table', { id: 'runs' }, h('thead', {}, h('tr', {}, ...['Name', 'Namespace', 'Workflow', 'Phase', 'Progress', 'Owner', 'Age', 'Duration'].map((c) => h('th', {}, c)))), body),
  );
  api('/api/v1/namespaces').then((l) => $('#namespaces').replaceChildren(...l.items.map((n) => h('option', { value: n.metadata.name })))).catch(() => {});
  const path = ns ? `${GROUP}/namespaces/${enc(ns)}/workflowinstances` : `${GROUP}/workflowinstances`;
  const rows = new Map();
  live(path, (items) => {
    const runs = [...items.values()]
      .filter((r) => !filters.workflow || r.spec.workflowRef.name === filters.workflow)
      .filter((r) => !filters.phase || phaseOf(r) === filters.phase)
      .sort((a, b) => Date.parse(b.metadata.creationTimestamp) - Date.parse(a.metadata.creationTimestamp));
    // Rows are kept by run and updated in place: a link being clicked is
    // never replaced between the press and the release.
    const keep = new Set();
    body.replaceChildren(...runs.map((r) => {
      const st = r.status || {};
      const key = `${r.metadata.namespace}/${r.metadata.name}`;
      keep.add(key);
      let row = rows.get(key);
      if (!row) {
        const cells = Array.from({ length: 8 }, () => h('td'));
        cells[0].append(h('a', { href: `#/run/${enc(r.metadata.namespace)}/${enc(r.metadata.name)}` }, r.metadata.name));
        cells[3].append(h('span'));
        row = { tr: h('tr', { 'data-run': r.metadata.name }, cells), cells };
        rows.set(key, row);
      }
      const phase = phaseOf(r);
      const badgeEl = row.cells[3].firstChild;
      if (badgeEl.textContent !== phase) {
        badgeEl.textContent = phase;
        badgeEl.className = `phase phase-${phase}`;
      }
      const texts = [null, r.metadata.namespace, r.spec.workflowRef.name, null, st.progress || '-', (st.owner && st.owner.controller) || '-',
        age(r.metadata.creationTimestamp), span(st.startedAt, st.finishedAt)];
      texts.forEach((t, i) => { if (t !== null && row.cells[i].textContent !== t) row.cells[i].textContent = t; });
      return row.tr;
    }));
    for (const key of [...rows.keys()]) if (!keep.has(key)) rows.delete(key);
    if (!runs.length) body.replaceChildren(h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No runs.')));
    if (!performance.getEntriesByName('baton:runs').length) performance.mark('baton:runs');
  });
}

// --------------------------------------------------------------------- run --

/** Layers of the run's tasks: depth = longest chain of dependencies; exit tasks after the DAG. */
function layout(spec) {
  const tasks = [...(spec.tasks || []), ...(spec.onExit || [])];
  const exitFrom = (spec.tasks || []).length;
  const index = new Map(tasks.map((t, i) => [t.name, i]));
  const depth = tasks.map(() => 0);
  for (let round = 0; round < tasks.length; round++) {
    let changed = false;
    tasks.forEach((t, i) => {
      const d = Math.max(0, ...(t.dependsOn || []).map((p) => (index.has(p) ? depth[index.get(p)] + 1 : 0)));
      if (d !== depth[i]) { depth[i] = d; changed = true; }
    });
    if (!changed) break;
  }
  const dagDepth = Math.max(0, ...depth.slice(0, exitFrom));
  const column = tasks.map((_, i) => (i >= exitFrom ? dagDepth + 1 + depth[i] : depth[i]));
  const columns = [];
  tasks.forEach((t, i) => { (columns[column[i]] = columns[column[i]] || []).push(i); });
  // Within a column, order by the mean row of the dependencies (fewer crossings).
  const row = new Map();
  columns.forEach((col) => {
    if (!col) return;
    const mean = (i) => { const ps = (tasks[i].dependsOn || []).filter((p) => row.has(p)); return ps.length ? ps.reduce((a, p) => a + row.get(p), 0) / ps.length : i; };
    col.sort((a, b) => mean(a) - mean(b));
    col.forEach((i, r) => row.set(tasks[i].name, r));
  });
  return { tasks, column, row, exitFrom };
}

function graph(run, open) {
  const st = run.status || {};
  const spec = st.workflowSpec;
  if (!spec) return h('p', { class: 'muted' }, 'No graph yet: the run has not been started by a controller.');
  const { tasks, column, row } = layout(spec);
  const W = 170, H = 30, GX = 60, GY = 14;
  const pos = (i) => ({ x: 20 + column[i] * (W + GX), y: 20 + row.get(tasks[i].name) * (H + GY) });
  const entries = new Map((st.tasks || []).map((t) => [t.name, t]));
  const width = 40 + (Math.max(0, ...column) + 1) * (W + GX);
  const height = 40 + (Math.max(0, ...tasks.map((t) => row.get(t.name))) + 1) * (H + GY);
  const svgEl = s('svg', { width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'task graph' });
  const index = new Map(tasks.map((t, i) => [t.name, i]));
  tasks.forEach((t, i) => {
    for (const dep of t.dependsOn || []) {
      if (!index.has(dep)) continue;
      const a = pos(index.get(dep)), b = pos(i);
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
      svgEl.append(s('path', { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
    }
  });
  tasks.forEach((t, i) => {
    const e = entries.get(t.name);
    const phase = (e && e.phase) || 'Pending';
    const instances = (st.tasks || []).filter((x) => x.name.startsWith(`${t.name}(`));
    const label = instances.length ? `${t.name} ×${instances.length}` : t.name;
    const p = pos(i);
    const g = s('g', { class: `node phase-${phase}`, 'data-task': t.name, 'data-phase': phase, transform: `translate(${p.x},${p.y})` },
      s('title', {}, `${t.name}: ${phase}${e && e.message ? ` — ${e.message}` : ''}`),
      s('rect', { width: W, height: H }),
      s('text', { x: 10, y: H / 2 + 4 }, label.length > 24 ? `${label.slice(0, 23)}…` : label));
    g.addEventListener('click', () => open(t.name));
    svgEl.append(g);
  });
  return svgEl;
}

const POD_PHASE = { Succeeded: 'Succeeded', Failed: 'Failed', Running: 'Running' };

/**
 * Bars of the timeline: one per attempt whose pod still exists (its start
 * and end as the kubelet reported them), and the current attempt from
 * status for a task without one (a child run, or a pod podGC deleted).
 */
function attempts(run, pods) {
  const st = run.status || {};
  const bars = [];
  const covered = new Set();
  for (const p of pods) {
    const l = p.metadata.labels || {};
    const key = l['baton.dev/item'] !== undefined ? `${l['baton.dev/task']}(${l['baton.dev/item']})` : l['baton.dev/task'];
    const attempt = Number(l['baton.dev/attempt']);
    const term = ((((p.status || {}).containerStatuses || [])[0] || {}).state || {}).terminated;
    const start = (p.status && p.status.startTime) || p.metadata.creationTimestamp;
    const phase = POD_PHASE[(p.status || {}).phase] || 'Pending';
    bars.push({ label: `${key} #${attempt}`, start, end: term ? term.finishedAt : null, phase, title: `${key}, attempt ${attempt} (pod ${p.metadata.name}): ${phase}` });
    if (attempt === ((st.tasks || []).find((t) => t.name === key) || {}).attempts - 1) covered.add(key);
  }
  for (const t of st.tasks || []) {
    if (!t.startedAt || covered.has(t.name)) continue;
    bars.push({ label: `${t.name} #${(t.attempts || 1) - 1}`, start: t.startedAt, end: t.finishedAt, phase: t.phase, title: `${t.name}, attempt ${(t.attempts || 1) - 1}: ${t.phase}` });
  }
  return bars.sort((a, b) => Date.parse(a.start) - Date.parse(b.start) || a.label.localeCompare(b.label));
}

function timeline(run, pods) {
  const st = run.status || {};
  const bars = attempts(run, pods);
  if (!bars.length) return h('p', { class: 'muted' }, 'No task has started yet.');
  const t0 = Math.min(Date.parse(st.startedAt || bars[0].start), ...bars.map((b) => Date.parse(b.start)));
  const t1 = Math.max(st.finishedAt ? Date.parse(st.finishedAt) : Date.now(), ...bars.map((b) => Date.parse(b.end || 0)));
  const W = 900, L = 160, RH = 18;
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 10);
  const height = 30 + bars.length * RH;
  const el = s('svg', { width: W, height, role: 'img', 'aria-label': 'timeline' });
  bars.forEach((b, i) => {
    const y = 20 + i * RH;
    const start = Date.parse(b.start);
    const end = b.end ? Date.parse(b.end) : Date.now();
    el.append(s('text', { x: 4, y: y + 12 }, b.label),
      s('rect', { class: `bar phase-${b.phase}`, x: x(start), y: y + 2, width: Math.max(2, x(end) - x(start)), height: RH - 5 },
        s('title', {}, `${b.title}, ${span(b.start, b.end)}`)));
  });
  for (const o of st.ownerHistory || []) {
    const t = Date.parse(o.since);
    if (t < t0 || t > t1) continue;
    el.append(s('line', { class: 'owner', x1: x(t), x2: x(t), y1: 4, y2: height }),
      s('text', { x: x(t) + 3, y: 12 }, `epoch ${o.epoch}: ${o.controller} (${o.reason})`));
  }
  return h('div', { class: 'timeline' }, el);
}

/** What `baton pause|resume|stop|retry` does, made by the server as the user; throws its refusal. */
async function request(ns, name, what) {
  const r = await fetch(`/ui/request?${new URLSearchParams({ namespace: ns, name, what })}`, { method: 'POST', headers: { 'X-Baton-UI': '1' } });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.message || r.statusText);
  return body.message;
}

function runPage(ns, name) {
  const head = h('div');
  const buttons = h('div', { class: 'buttons' });
  const graphBox = h('div', { class: 'graph' });
  const tasksBox = h('section');
  const timeBox = h('section');
  const condBox = h('section');
  const eventsBox = h('section', {}, h('h2', {}, 'Events'));
  $('#page').replaceChildren(head, buttons, h('section', {}, h('h2', {}, 'Graph'), graphBox), tasksBox, timeBox, condBox, eventsBox);
  const open = (task) => { location.hash = `#/task/${enc(ns)}/${enc(name)}/${enc(task)}`; };
  const here = page;
  let said = '';
  let pods = [];
  let latest = null;
  let buttonState = '';
  let graphState = '';
  let watching = null;
  const drawTimeline = () => {
    if (latest) timeBox.replaceChildren(h('h2', {}, 'Timeline (task attempts; dashed: owner changes)'), timeline(latest, pods));
  };
  /** The run's pods and Events, watched by its UID once it is known (a run re-created under the name has others). */
  const follow = (uid) => {
    if (watching === uid) return;
    watching = uid;
    // The label holds the run's name when it has at most 63 characters (the controller shortens longer ones).
    if (name.length <= 63) {
      live(`/api/v1/namespaces/${enc(ns)}/pods?labelSelector=${enc(`baton.dev/instance=${name}`)}`, (items) => {
        pods = [...items.values()].filter((p) => controlledBy(p, uid));
        drawTimeline();
      }, () => {}); // Without pods, the timeline shows the current attempts from status.
    }
    live(`/api/v1/namespaces/${enc(ns)}/events?fieldSelector=${enc(`involvedObject.uid=${uid}`)}`, (items) => {
      const when = (e) => Date.parse(e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp || 0);
      const rows = [...items.values()].sort((a, b) => when(b) - when(a))
        .map((e) => h('tr', {}, h('td', {}, e.type), h('td', {}, e.reason), h('td', {}, age(e.lastTimestamp || e.eventTime)), h('td', {}, e.message)));
      eventsBox.replaceChildren(h('h2', {}, 'Events'), h('table', { id: 'events' }, h('thead', {}, h('tr', {}, ...['Type', 'Reason', 'Age', 'Message'].map((c) => h('th', {}, c)))), h('tbody', {}, rows)));
    }, (e) => { if (e.message) eventsBox.replaceChildren(h('h2', {}, 'Events'), h('p', { class: 'muted' }, e.message)); });
  };
  live(`${GROUP}/namespaces/${enc(ns)}/workflowinstances?fieldSelector=${enc(`metadata.name=${name}`)}`, (items) => {
    const run = items.get(`${ns}/${name}`);
    if (!run) {
      head.replaceChildren(h('h1', {}, name), h('p', { class: 'muted' }, `No run ${name} in namespace ${ns}.`));
      return;
    }
    follow(run.metadata.uid);
    const st = run.status || {};
    const phase = phaseOf(run);
    const ended = TERMINAL.includes(phase);
    const requests = [run.spec.suspend && 'suspend=true', run.spec.shutdown && `shutdown=${run.spec.shutdown}`, run.spec.retryFailed && `retryFailed=${run.spec.retryFailed}`].filter(Boolean);
    head.replaceChildren(
      h('h1', {}, name, ' ', h('span', { id: 'run-phase', 'data-phase': phase }, badge(phase))),
      h('dl', {},
        h('dt', {}, 'Namespace'), h('dd', {}, ns),
        h('dt', {}, 'Workflow'), h('dd', {}, run.spec.workflowRef.name),
        h('dt', {}, 'Progress'), h('dd', {}, st.progress || '-'),
        h('dt', {}, 'Owner'), h('dd', { id: 'owner' }, st.owner ? `${st.owner.controller} (epoch ${st.owner.epoch}, since ${st.owner.since})` : 'none yet'),
        h('dt', {}, 'Started'), h('dd', {}, st.startedAt || '-'),
        h('dt', {}, 'Duration'), h('dd', {}, span(st.startedAt, st.finishedAt)),
        h('dt', {}, 'Requests'), h('dd', {}, requests.join(' ') || '-')));
    // The buttons are rebuilt only when what they can do changes, so a
    // click is never lost to an update between its press and release.
    const enabled = { pause: !ended && !run.spec.suspend && !run.spec.shutdown, resume: !ended && run.spec.suspend && !run.spec.shutdown, stop: !ended && !run.spec.shutdown, retry: ended && phase !== 'Succeeded' };
    const state = JSON.stringify(enabled);
    if (state !== buttonState) {
      buttonState = state;
      const button = (id, label) => h('button', {
        id, disabled: !enabled[id],
        onclick: () => request(ns, name, id).then((m) => {
          if (page !== here) return;
          showError('');
          said = m;
          $('#said').textContent = m;
        }).catch((e) => { if (page === here) showError(e.message); }),
      }, label);
      buttons.replaceChildren(button('pause', 'Pause'), button('resume', 'Resume'), button('stop', 'Stop'), button('retry', 'Retry'), h('span', { id: 'said', class: 'muted' }, said));
    }
    // The graph is redrawn, in its box (which keeps where it was scrolled
    // to), only when a task's phase changed: a node being clicked stays.
    const drawn = JSON.stringify([!!st.workflowSpec, (st.tasks || []).map((t) => [t.name, t.phase, t.message || ''])]);
    if (drawn !== graphState) {
      graphState = drawn;
      graphBox.replaceChildren(graph(run, open));
    }
    // For `make bench-ui`: when the graph was first drawn.
    if (!performance.getEntriesByName('baton:graph').length) performance.mark('baton:graph');
    tasksBox.replaceChildren(h('h2', {}, 'Tasks'), h('table', { id: 'tasks' },
      h('thead', {}, h('tr', {}, ...['Task', 'Phase', 'Attempts', 'Duration', 'Pod / child run', 'Exit', 'Message / result'].map((c) => h('th', {}, c)))),
      h('tbody', {}, (st.tasks || []).map((t) => h('tr', { 'data-task': t.name },
        h('td', {}, h('a', { href: `#/task/${enc(ns)}/${enc(name)}/${enc(t.name)}` }, t.name)), h('td', {}, badge(t.phase)),
        h('td', {}, t.attempts || ''), h('td', {}, t.startedAt ? span(t.startedAt, t.finishedAt) : ''),
        h('td', {}, t.podName || t.childInstance || ''), h('td', {}, t.exitCode ?? ''),
        h('td', {}, (t.outputs && t.outputs.result !== undefined) ? `result: ${t.outputs.result}` : (t.message || t.reason || '')))))));
    latest = run;
    drawTimeline();
    condBox.replaceChildren(h('h2', {}, 'Conditions'), h('table', {}, h('tbody', {}, (st.conditions || []).map((c) =>
      h('tr', {}, h('td', {}, c.type), h('td', {}, c.status), h('td', {}, c.reason), h('td', {}, c.message))))));
  });
}

// -------------------------------------------------------------------- task --

async function taskPage(ns, name, task) {
  const here = page;
  const pageEl = $('#page');
  pageEl.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  let run;
  try {
    run = await api(runPath(ns, name));
  } catch (e) {
    if (page !== here) return;
    showError(e.message);
    pageEl.replaceChildren();
    return;
  }
  if (page !== here) return;
  const entries = (run.status || {}).tasks || [];
  const entry = entries.find((t) => t.name === task) || { name: task, phase: 'Pending' };
  const instances = entries.filter((t) => t.name.startsWith(`${task}(`));
  const back = h('p', {}, h('a', { href: `#/run/${enc(ns)}/${enc(name)}` }, `← run ${name}`));
  const fields = [['Phase', badge(entry.phase)], ['Attempts', entry.attempts || 0], ['Exit code', entry.exitCode ?? '-'],
    ['Pod / child run', entry.podName || entry.childInstance || '-'], ['Reason', entry.reason || '-'], ['Item', entry.item || '-'],
    ['Started', entry.startedAt || '-'], ['Finished', entry.finishedAt || '-']];
  const summary = [h('h1', {}, task), h('dl', {}, fields.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
    h('h2', {}, 'Message'), h('pre', { id: 'message' }, entry.message || '-')];
  if (instances.length) {
    // A fanned-out task: its instances, each with its own attempts and log.
    pageEl.replaceChildren(back, ...summary, h('h2', {}, 'Instances'), h('table', { id: 'instances' }, h('tbody', {}, instances.map((t) =>
      h('tr', {}, h('td', {}, h('a', { href: `#/task/${enc(ns)}/${enc(name)}/${enc(t.name)}` }, t.name)), h('td', {}, badge(t.phase)),
        h('td', {}, t.item || ''), h('td', {}, t.exitCode ?? ''), h('td', {}, t.message || (t.outputs && t.outputs.result) || ''))))));
    return;
  }
  const base = task.replace(/\(\d+\)$/, '');
  const item = task.match(/\((\d+)\)$/);
  const selector = `baton.dev/task=${base}${item ? `,baton.dev/item=${item[1]}` : ''}`;
  const logBox = h('pre', { class: 'log', id: 'log' }, '');
  pageEl.replaceChildren(back, ...summary,
    h('h2', {}, 'Result'), h('pre', { id: 'result' }, (entry.outputs && entry.outputs.result) ?? '-'),
    h('h2', {}, 'Attempts'), h('table', { id: 'attempts' }, h('tbody')),
    h('h2', {}, 'Log (the last 2,000 lines)'), logBox);
  // The task's own container (the pod's first): sidecars make a log ambiguous otherwise.
  const main = (p) => ((p.spec || {}).containers || [{}])[0].name;
  const showLog = (p) => api(`/api/v1/namespaces/${enc(ns)}/pods/${enc(p.metadata.name)}/log?tailLines=2000&container=${enc(main(p))}`, { text: true })
    .then((t) => { if (page === here) logBox.textContent = t; })
    .catch((e) => { if (page === here) logBox.textContent = `No log: ${e.message}`; });
  try {
    const pods = (await api(`/api/v1/namespaces/${enc(ns)}/pods?labelSelector=${enc(selector)}`)).items
      // Only pods whose controller is this run (the identity rule), and not other instances' (no item label on a plain task).
      .filter((p) => controlledBy(p, run.metadata.uid))
      .filter((p) => item || p.metadata.labels['baton.dev/item'] === undefined)
      .sort((a, b) => Number(a.metadata.labels['baton.dev/attempt']) - Number(b.metadata.labels['baton.dev/attempt']));
    if (page !== here) return;
    const rows = pods.map((p) => {
      const status = (((p.status || {}).containerStatuses) || []).find((c) => c.name === main(p)) || {};
      const term = (status.state || {}).terminated;
      return h('tr', {}, h('td', {}, `attempt ${p.metadata.labels['baton.dev/attempt']}`), h('td', {}, p.metadata.name),
        h('td', {}, (p.status || {}).phase || '-'), h('td', {}, term ? `exit ${term.exitCode}` : ''),
        h('td', {}, h('button', { onclick: () => showLog(p) }, 'Log')));
    });
    $('#attempts tbody').replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', { class: 'muted' }, 'No pod of this task exists (not started, a child run, or deleted by podGC).'))]));
    if (pods.length) showLog(pods[pods.length - 1]);
    else logBox.textContent = 'No pod to read a log from.';
  } catch (e) {
    if (page === here) showError(e.message);
  }
}

// --------------------------------------------------------------- workflows --

function workflowsPage(query) {
  const ns = query.has('ns') ? query.get('ns') : config.namespace;
  const body = h('tbody');
  const nsInput = h('input', { placeholder: 'all namespaces', value: ns });
  nsInput.addEventListener('change', () => { location.hash = `#/workflows?${new URLSearchParams({ ns: nsInput.value.trim() })}`; });
  $('#page').replaceChildren(h('h1', {}, 'Workflows'), h('div', { class: 'filters' }, h('label', {}, 'Namespace ', nsInput)),
    h('table', { id: 'workflows' }, h('thead', {}, h('tr', {}, ...['Name', 'Namespace', 'Tasks', 'Schedule', 'Next tick', 'Last tick', 'Active runs', 'Missed ticks', 'Valid'].map((c) => h('th', {}, c)))), body));
  const nextTicks = new Map();
  live(ns ? `${GROUP}/namespaces/${enc(ns)}/workflows` : `${GROUP}/workflows`, (items) => {
    body.replaceChildren(...[...items.values()].sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)).map((w) => {
      const sch = w.spec.schedule;
      const st = w.status || {};
      const valid = (st.conditions || []).find((c) => c.type === 'Valid');
      const next = h('td', {}, sch ? (sch.suspend ? 'suspended' : '…') : '-');
      if (sch && !sch.suspend) {
        const q = `cron=${enc(sch.cron)}${sch.timeZone ? `&timeZone=${enc(sch.timeZone)}` : ''}`;
        const cached = nextTicks.get(q);
        if (!cached || Date.now() - cached.at > 30000) nextTicks.set(q, { at: Date.now(), answer: fetch(`/ui/next-tick?${q}`).then((r) => r.json()) });
        nextTicks.get(q).answer.then((n) => { next.textContent = n.next || n.error; });
      }
      return h('tr', {}, h('td', {}, w.metadata.name), h('td', {}, w.metadata.namespace), h('td', {}, (w.spec.tasks || []).length),
        h('td', {}, sch ? `${sch.cron}${sch.timeZone ? ` (${sch.timeZone})` : ''}` : '-'), next, h('td', {}, st.lastScheduleTime || '-'),
        h('td', {}, (st.activeRuns || []).flatMap((r, i) => [i ? ', ' : '', h('a', { href: `#/run/${enc(w.metadata.namespace)}/${enc(r)}` }, r)])),
        h('td', {}, st.missedTicks || 0), h('td', {}, valid ? `${valid.status}${valid.status === 'False' ? `: ${valid.message}` : ''}` : '-'));
    }));
  });
}

// ------------------------------------------------------------------ router --

/** Incremented at every page change: late answers for an older page are dropped. */
let page = 0;

function route() {
  leave();
  showError('');
  page += 1;
  $('#live').textContent = '';
  const [path, q] = location.hash.replace(/^#\/?/, '').split('?');
  let parts;
  try { parts = path.split('/').map(decodeURIComponent); } catch (_) { parts = ['runs']; }
  const query = new URLSearchParams(q || '');
  if (parts[0] === 'run' && parts.length === 3) runPage(parts[1], parts[2]);
  else if (parts[0] === 'task' && parts.length === 4) taskPage(parts[1], parts[2], parts[3]);
  else if (parts[0] === 'workflows') workflowsPage(query);
  else runsPage(query);
}

fetch('/ui/config').then((r) => r.json()).then((c) => { config = c; }).catch(() => {}).finally(() => {
  window.addEventListener('hashchange', route);
  route();
});
