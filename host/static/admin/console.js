// The pgws console: polls /admin/stats every second and turns consecutive totals into rates and
// guest-call percentiles, kept for the last minutes per tenant and charted with uPlot; lists guests
// with upload, rollback and remove; shows the listener. The admin token lives only in `token`.
'use strict';

const KEEP_SECONDS = 600;
const $ = (id) => document.getElementById(id);

let token = null;
let timers = [];
let session = 0; // bumped at sign-out, so a poll of an earlier sign-in stops
let last = null; // the previous /admin/stats answer
let selected = null; // the charted tenant
const series = new Map(); // tenant → {t, in, out, conns, p50, p99, fail}
let charts = null;

class Refused extends Error {}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: 'Bearer ' + token },
    body,
    cache: 'no-store',
  });
  let data = null;
  try { data = await response.json(); } catch { /* not JSON */ }
  if (response.status === 401) throw new Refused('the admin token was refused');
  if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  return data;
}

// Login: the token is checked with one stats request before the dashboard opens.
$('login-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  token = $('token').value.trim();
  $('token').value = '';
  $('login-error').textContent = '';
  try {
    update(await api('GET', '/admin/stats'));
  } catch (e) {
    token = null;
    $('login-error').textContent = e instanceof Refused ? 'Wrong admin token.' : 'Cannot reach pgws: ' + e.message;
    return;
  }
  $('login').hidden = true;
  $('dashboard').hidden = false;
  $('signout').hidden = false;
  charts = charts || makeCharts();
  refreshGuests();
  refreshChannels();
  const mine = session;
  // Each poll starts a second after the previous one ended, so slow answers never pile up.
  const every = (ms, work) => {
    const run = () => poll(work()).finally(() => {
      if (session === mine && token) timers.push(setTimeout(run, ms));
    });
    timers.push(setTimeout(run, ms));
  };
  every(1000, () => api('GET', '/admin/stats').then(update));
  every(5000, refreshGuests);
  every(5000, refreshChannels);
});

$('signout').addEventListener('click', () => signOut(''));

function signOut(reason) {
  token = null;
  session += 1;
  timers.forEach(clearTimeout);
  timers = [];
  last = null;
  selected = null;
  series.clear();
  $('dashboard').hidden = true;
  $('signout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = reason;
}

function poll(promise) {
  return promise.catch((e) => {
    if (e instanceof Refused) signOut('Signed out: ' + e.message + '.');
    else setListener(false, 'pgws unreachable');
  });
}

// --- figures --------------------------------------------------------------------------------------

// The time below which `q` of the calls in `counts` (per bucket, bounds in µs) finished: the bucket's
// bounds, interpolated on a log scale.
function percentile(counts, bounds, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] === 0) continue;
    if (seen + counts[i] >= rank) {
      const hi = i < bounds.length ? bounds[i] : bounds[bounds.length - 1] * 10;
      const lo = i === 0 ? hi / 10 : bounds[i - 1];
      const within = (rank - seen) / counts[i];
      return lo * Math.pow(hi / lo, within);
    }
    seen += counts[i];
  }
  return bounds[bounds.length - 1];
}

function update(snap) {
  // An answer older than the last one shown (answers can overtake each other) is dropped.
  if (last && snap.now_ms <= last.now_ms) return;
  setListener(snap.listener_connected, snap.listener_connected ? 'listening' : 'disconnected');
  $('received').textContent = `${snap.notifications_received} notifications received · `
    + `${snap.listener_reconnects} reconnects · ${snap.tenant_count} tenants`
    + (snap.tenant_count > snap.tenants.length ? ` (the ${snap.tenants.length} busiest shown)` : '');
  const before = new Map((last ? last.tenants : []).map((t) => [t.tenant, t]));
  const seconds = last ? Math.max(0.001, (snap.now_ms - last.now_ms) / 1000) : null;
  const rows = [];
  for (const t of snap.tenants) {
    const prev = before.get(t.tenant);
    // A tenant seen for the first time (or whose totals restarted) has no rate yet.
    const rate = (key) => (prev && seconds && t[key] >= prev[key] ? (t[key] - prev[key]) / seconds : null);
    const calls = prev ? t.call_time.map((n, i) => Math.max(0, n - prev.call_time[i])) : [];
    const row = {
      tenant: t.tenant,
      in: rate('notifications'),
      out: rate('published'),
      conns: t.connections,
      p50: prev ? percentile(calls, snap.call_time_bounds_us, 0.5) : null,
      p99: prev ? percentile(calls, snap.call_time_bounds_us, 0.99) : null,
      fail: rate('guest_failures'),
      queue: t.queue_dropped,
      state: t.isolated_for_ms != null ? `isolated ${Math.ceil(t.isolated_for_ms / 1000)} s`
        : (rate('throttled') > 0 ? 'throttled' : 'ok'),
    };
    rows.push(row);
    record(row, snap.now_ms / 1000);
  }
  last = snap;
  for (const name of series.keys()) {
    if (!snap.tenants.some((t) => t.tenant === name)) series.delete(name);
  }
  if (!selected || !series.has(selected)) {
    const busiest = rows.slice().sort((a, b) => (b.out || 0) - (a.out || 0))[0];
    selected = busiest ? busiest.tenant : null;
  }
  renderTenants(rows);
  drawCharts();
}

function record(row, now) {
  let h = series.get(row.tenant);
  if (!h) {
    h = { t: [], in: [], out: [], conns: [], p50: [], p99: [], fail: [] };
    series.set(row.tenant, h);
  }
  for (const key of Object.keys(h)) h[key].push(key === 't' ? now : row[key]);
  while (h.t.length && h.t[0] < now - KEEP_SECONDS) for (const key of Object.keys(h)) h[key].shift();
}

const number = (v, digits = 1) => (v == null ? '–' : v.toFixed(digits));
const micros = (v) => (v == null ? '–' : v < 1000 ? `${v.toFixed(1)} µs` : `${(v / 1000).toFixed(2)} ms`);

function renderTenants(rows) {
  const body = $('tenants').tBodies[0];
  $('no-tenants').hidden = rows.length > 0;
  const cells = ['tenant', 'in', 'out', 'conns', 'p50', 'p99', 'fail', 'queue', 'state'];
  const seen = new Set();
  for (const row of rows) {
    seen.add(row.tenant);
    let tr = body.querySelector(`tr[data-tenant="${CSS.escape(row.tenant)}"]`);
    if (!tr) {
      tr = document.createElement('tr');
      tr.dataset.tenant = row.tenant;
      for (const c of cells) {
        const td = document.createElement('td');
        td.className = c + (c === 'tenant' || c === 'state' ? '' : ' num');
        tr.appendChild(td);
      }
      tr.addEventListener('click', () => { selected = row.tenant; renderSelection(); drawCharts(); });
      body.appendChild(tr);
    }
    const text = {
      tenant: row.tenant, in: number(row.in), out: number(row.out), conns: String(row.conns),
      p50: micros(row.p50), p99: micros(row.p99), fail: number(row.fail), queue: String(row.queue),
      state: row.state,
    };
    for (const c of cells) tr.querySelector('.' + c).textContent = text[c];
    tr.querySelector('.state').className = 'state ' + (row.state === 'ok' ? '' : 'warn');
  }
  for (const tr of [...body.rows]) if (!seen.has(tr.dataset.tenant)) tr.remove();
  [...body.rows].sort((a, b) => a.dataset.tenant.localeCompare(b.dataset.tenant)).forEach((tr) => body.appendChild(tr));
  renderSelection();
}

function renderSelection() {
  for (const tr of $('tenants').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.tenant === selected);
  $('chart-tenant').textContent = selected || 'no tenant selected';
}

// --- charts ---------------------------------------------------------------------------------------

function makeCharts() {
  const specs = [
    { id: 'chart-messages', title: 'messages / s', series: [['in', '#2563eb'], ['out', '#16a34a']] },
    { id: 'chart-connections', title: 'connections', series: [['conns', '#7c3aed']] },
    { id: 'chart-guest', title: 'guest call time (µs)', series: [['p50', '#0891b2'], ['p99', '#ea580c']] },
    { id: 'chart-failures', title: 'guest failures / s', series: [['fail', '#dc2626']] },
  ];
  const width = Math.max(380, Math.min(560, ($('charts').clientWidth || 900) / 2 - 20));
  return specs.map((spec) => {
    const el = document.createElement('div');
    el.id = spec.id;
    $('charts').appendChild(el);
    const plot = new uPlot({
      title: spec.title,
      width,
      height: 180,
      series: [{}, ...spec.series.map(([label, stroke]) => ({ label, stroke, width: 2, spanGaps: false }))],
      scales: { x: { time: true } },
    }, [[], ...spec.series.map(() => [])], el);
    return { spec, plot };
  });
}

function drawCharts() {
  if (!charts) return;
  const h = selected && series.get(selected);
  for (const { spec, plot } of charts) {
    plot.setData(h ? [h.t, ...spec.series.map(([key]) => h[key])] : [[], ...spec.series.map(() => [])]);
  }
}

// --- guests ---------------------------------------------------------------------------------------

async function refreshGuests() {
  const { guests } = await api('GET', '/admin/guests');
  const body = $('guests').tBodies[0];
  body.replaceChildren();
  for (const g of guests) {
    const tr = document.createElement('tr');
    tr.dataset.guest = g.guest;
    const loaded = g.loaded_at ? new Date(g.loaded_at * 1000).toLocaleTimeString() : '–';
    const values = [
      ['name', g.guest], ['state', g.state], ['version', g.version || '–'], ['bytes', g.bytes ?? '–'],
      ['compile', g.compile_ms ?? '–'], ['loaded', loaded], ['failures', g.failures],
      ['previous', g.previous_version || '–'],
    ];
    for (const [cls, v] of values) {
      const td = document.createElement('td');
      td.className = cls + (['bytes', 'compile', 'failures'].includes(cls) ? ' num' : '');
      td.textContent = String(v);
      if (cls === 'state' && (g.state !== 'serving' || g.refused)) {
        td.classList.add('warn');
        // A refused file behind a version that still serves is worth seeing too.
        if (g.refused) {
          td.textContent = g.state === 'serving' ? 'serving (newer file refused)' : g.state;
          td.title = g.refused.error || JSON.stringify(g.refused);
        }
      }
      tr.appendChild(td);
    }
    const actions = document.createElement('td');
    const rollback = button('Roll back', 'rollback', () => act('POST', `/admin/guests/${encodeURIComponent(g.guest)}/rollback`, `${g.guest} rolled back`));
    rollback.disabled = !g.previous_version;
    const remove = button('Remove', 'remove', () => {
      if (confirm(`Remove the guest of ${g.guest}?`)) act('DELETE', `/admin/guests/${encodeURIComponent(g.guest)}`, `${g.guest} removed`);
    });
    actions.append(rollback, ' ', remove);
    tr.appendChild(actions);
    body.appendChild(tr);
  }
}

function button(label, cls, onclick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = label;
  b.className = cls;
  b.addEventListener('click', onclick);
  return b;
}

function say(text, error) {
  $('message').textContent = text;
  $('message').className = error ? 'error' : '';
}

async function act(method, path, done, body) {
  try {
    const answer = await api(method, path, body);
    say(answer && answer.version ? `${done}: version ${answer.version} serving` : done, false);
  } catch (e) {
    if (e instanceof Refused) return signOut('Signed out: ' + e.message + '.');
    say(e.message, true);
  }
  await refreshGuests().catch(() => {});
}

$('upload-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const tenant = $('upload-tenant').value.trim();
  const file = $('upload-file').files[0];
  if (!tenant || !file) return;
  say(`uploading ${file.name} for ${tenant}…`, false);
  await act('PUT', `/admin/guests/${encodeURIComponent(tenant)}`, `${tenant} uploaded`, await file.arrayBuffer());
});

// --- listener -------------------------------------------------------------------------------------

function setListener(up, text) {
  $('listener').textContent = text;
  $('listener').className = 'pill ' + (up ? 'up' : 'down');
}

async function refreshChannels() {
  let report;
  try {
    report = await api('GET', '/admin/channels');
  } catch (e) {
    if (e instanceof Refused) throw e;
    $('listening').textContent = 'unknown: ' + e.message;
    return;
  }
  $('listening').textContent = (report.listening || []).join(', ') || 'nothing';
  const body = $('channels').tBodies[0];
  body.replaceChildren();
  for (const [channel, tenants] of Object.entries(report.subscribed || {})) {
    for (const [tenant, sockets] of Object.entries(tenants)) {
      const tr = document.createElement('tr');
      for (const [v, cls] of [[channel, ''], [tenant, ''], [sockets, 'num']]) {
        const td = document.createElement('td');
        td.textContent = String(v);
        td.className = cls;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }
}
