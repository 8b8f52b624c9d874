// vprov console: one page over the /api/v1 JSON API (docs/api.md), same origin.
//
// No libraries, no build step. Data only ever reaches the DOM as text (textContent,
// createElement, setAttribute): host names and messages come from untrusted devices.
'use strict';

const SESSION = '/api/v1/session';
const PAGES = ['dashboard', 'batches', 'unmanaged', 'managed', 'pki', 'alerts', 'plugins', 'audit'];
const SEVERITIES = ['info', 'warning', 'error', 'critical'];
const DEVICE_PAGE = 200;      // devices fetched per request
const MAX_DEVICES = 20000;    // stop listing beyond this many
const MAX_KEYS_SHOWN = 5000;  // rows of a key list drawn at most
const MAX_ALERT_ROWS = 500;   // live alerts kept in the alert table
const POWER_ACTIONS = ['status', 'on', 'off', 'reset', 'cycle'];
const POWER_LABELS = { status: 'Status', on: 'On', off: 'Off', reset: 'Reset', cycle: 'Cycle' };
// The disruptive power actions ask first.
const POWER_CONFIRM = {
  off: 'Power off %s? Its operating system is not shut down cleanly.',
  reset: 'Reset %s (hard reboot)? Unsaved work on it is lost.',
  cycle: 'Power-cycle %s (off, then on)? Unsaved work on it is lost.',
};

const state = {
  user: null,            // {name, role} once signed in
  page: null,            // the page shown
  events: null,          // the EventSource
  eventsRetry: null,     // timer reopening a refused event stream
  offlineSince: null,    // set while the event stream is down: resync on reconnect
  profiles: [],          // agent profile names
  formats: null,         // promise of the export formats (admins)
  devices: new Map(),    // uuid → last known Device
  power: new Map(),      // uuid → last known power state
  generations: new Map(),// generation id → newest progress seen
  generation: null,      // id of the generation this console started last
  soon: new Map(),       // page → debounce timer of a pending reload
  recentAlerts: [],      // the last alert events (merged into a listing fetched meanwhile)
};

// ---------------------------------------------------------------- helpers

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const enc = encodeURIComponent;

// Properties set directly instead of as attributes.
const PROPS = new Set(['checked', 'disabled', 'value', 'selected', 'indeterminate']);

/** Creates `<tag>` with `attrs` (on* functions become listeners) and children
 *  (nodes, or anything else as text; arrays are flattened, null/false skipped). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** A cell showing `v` as text, "-" when empty. */
const td = (v, attrs) => h('td', attrs, v == null || v === '' ? '-' : v);
const numTd = (v) => td(v, { class: 'num' });
const fmtTime = (iso) => (iso ? new Date(iso).toLocaleString() : '-');
const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const isAdmin = () => state.user?.role === 'admin';
const hostOf = (uuid) => state.devices.get(uuid)?.host_name || uuid;

/** A placeholder row spanning a table with no data rows. */
const emptyRow = (cols, text) => h('tr', { class: 'empty' }, h('td', { class: 'empty', colspan: cols }, text));

/** Replaces a table body's rows, or shows `emptyText`. */
function fillBody(tbody, rows, cols, emptyText) {
  tbody.replaceChildren(...(rows.length ? rows : [emptyRow(cols, emptyText)]));
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Calls the API; resolves to the JSON answer (null for 204), throws ApiError with
 *  the server's `error` text. A 401 (outside signing in) returns to the sign-in page. */
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-Vprov-Console'] = '1';
  const opts = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, opts);
  } catch {
    throw new ApiError(0, 'cannot reach the vprov server');
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const msg = typeof data?.error === 'string' ? data.error : `${res.status} ${res.statusText}`.trim();
    const err = new ApiError(res.status, msg);
    err.retryAfter = res.headers.get('Retry-After');
    err.body = data;
    if (res.status === 401 && !(method === 'POST' && path === SESSION)) {
      signedOut(state.user ? 'your session has ended: sign in again' : '');
    }
    throw err;
  }
  return data;
}

// ---------------------------------------------------------------- status area

let statusTimer = null;

/** Shows a message in #status; `kind` is "ok" or "error". Successes fade after a while. */
function showStatus(msg, kind = 'ok') {
  const el = $('#status');
  el.textContent = msg;
  el.className = kind;
  el.hidden = false;
  clearTimeout(statusTimer);
  if (kind === 'ok') statusTimer = setTimeout(() => el.classList.add('stale'), 8000);
}

/** Reports a failed action (401s already went back to signing in). */
function fail(err) {
  if (err?.status === 401) return;
  if (!(err instanceof ApiError)) console.error(err); // a bug, not an answer
  showStatus(err?.message || String(err), 'error');
}

/** Runs `fn` with `btn` disabled, reporting errors. */
async function act(btn, fn) {
  if (btn) btn.disabled = true;
  try {
    await fn();
  } catch (e) {
    fail(e);
  } finally {
    if (btn) btn.disabled = false;
  }
}

// ---------------------------------------------------------------- session

function showSignIn() {
  $('#app').hidden = true;
  $('#signin-view').hidden = false;
  $('#signin-name').focus();
}

async function onSignIn(ev) {
  ev.preventDefault();
  const errEl = $('#signin-error');
  errEl.textContent = '';
  const btn = $('#signin-submit');
  btn.disabled = true;
  try {
    const me = await api('POST', SESSION, {
      name: $('#signin-name').value.trim(),
      password: $('#signin-password').value,
    });
    $('#signin-password').value = '';
    enterApp(me);
  } catch (e) {
    const wait = e.status === 429 && e.retryAfter ? ` (try again in ${e.retryAfter} s)` : '';
    errEl.textContent = e.message + wait;
  } finally {
    btn.disabled = false;
  }
}

/** Shows the app for `me` = {name, role}. */
function enterApp(me) {
  state.user = me;
  $('#whoami').textContent = me.name;
  $('#whoami-role').textContent = me.role;
  document.body.dataset.role = me.role;
  for (const el of $$('.admin-only')) el.hidden = !isAdmin();
  $('#signin-view').hidden = true;
  $('#signin-error').textContent = '';
  $('#signin-hint').hidden = true;
  $('#app').hidden = false;
  openEvents();
  loadProfiles();
  if (!location.hash.startsWith('#/')) history.replaceState(null, '', '#/dashboard');
  route();
}

async function onSignOut() {
  try {
    await api('DELETE', SESSION);
  } catch (e) {
    fail(e);
  } finally {
    signedOut('');
  }
}

/** Forgets everything shown (revealed keys included) and shows the sign-in form,
 *  with `reason` under it. */
function signedOut(reason) {
  if (!state.user && !$('#signin-view').hidden) return;
  state.user = null;
  state.page = null;
  closeEvents();
  state.devices.clear();
  state.power.clear();
  state.generations.clear();
  state.generation = null;
  state.formats = null;
  state.recentAlerts = [];
  for (const t of state.soon.values()) clearTimeout(t);
  state.soon.clear();
  for (const tb of $$('#app tbody')) tb.replaceChildren();
  hideKeys();
  $('#inventory').textContent = '';
  $('#inventory-panel').hidden = true;
  $('#generate-progress').hidden = true;
  $('#recent-alerts').replaceChildren();
  $('#status').hidden = true;
  delete document.body.dataset.role;
  $('#signin-error').textContent = reason || '';
  showSignIn();
}

// ---------------------------------------------------------------- routing

const LOADERS = {
  dashboard: loadDashboard,
  batches: loadBatches,
  unmanaged: loadUnmanaged,
  managed: loadManaged,
  pki: loadPki,
  alerts: loadAlerts,
  plugins: loadPlugins,
  audit: loadAudit,
};

function currentPage() {
  const m = location.hash.match(/^#\/([a-z]+)/);
  return m && PAGES.includes(m[1]) ? m[1] : 'dashboard';
}

/** Shows the page named by the hash and loads its data afresh. */
function route() {
  if (!state.user) return;
  const page = currentPage();
  state.page = page;
  for (const p of PAGES) $(`#page-${p}`).hidden = p !== page;
  for (const a of $$('nav a[data-page]')) a.classList.toggle('active', a.dataset.page === page);
  if (page !== 'batches') hideKeys(); // revealed PPSs do not linger off their page
  LOADERS[page]().catch(fail);
}

/** Reloads `page` shortly if it is shown (coalesces bursts of live events). */
function refreshSoon(page, delay = 400) {
  if (state.page !== page || state.soon.has(page)) return;
  state.soon.set(page, setTimeout(() => {
    state.soon.delete(page);
    if (state.page === page) LOADERS[page]().catch(fail);
  }, delay));
}

// ---------------------------------------------------------------- live events

function setLive(on) {
  const el = $('#live');
  el.textContent = on ? 'live' : 'offline';
  el.className = on ? 'live' : 'offline';
}

/** Opens the event stream. The browser reconnects by itself after network errors; a
 *  refused stream (e.g. an expired session) is retried here after checking the session. */
function openEvents() {
  const offlineSince = state.offlineSince;
  closeEvents();
  state.offlineSince = offlineSince;
  const es = new EventSource('/api/v1/events');
  state.events = es;
  es.addEventListener('open', () => {
    setLive(true);
    if (state.offlineSince) {
      state.offlineSince = null;
      resync(); // events may have been missed while offline
    }
  });
  es.addEventListener('error', () => {
    setLive(false);
    if (state.offlineSince == null) state.offlineSince = Date.now();
    if (es.readyState === EventSource.CLOSED && state.events === es) retryEvents();
  });
  const handlers = { device: onDeviceEvent, alert: onAlertEvent, generation: onGeneration };
  for (const [name, fn] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => {
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      try { fn(data); } catch (e) { console.error(e); }
    });
  }
}

/** Reopens a refused stream in 5 s if the session is still valid (a 401 signs out). */
function retryEvents() {
  clearTimeout(state.eventsRetry);
  state.eventsRetry = setTimeout(async () => {
    try {
      await api('GET', SESSION);
      if (state.user) openEvents();
    } catch (e) {
      if (e.status !== 401 && state.user) retryEvents();
    }
  }, 5000);
}

function closeEvents() {
  clearTimeout(state.eventsRetry);
  if (state.events) state.events.close();
  state.events = null;
  state.offlineSince = null;
  setLive(false);
}

/** After a reconnect: reload the page shown and the generation in progress. */
function resync() {
  if (!state.user) return;
  if (state.page) LOADERS[state.page]().catch(fail);
  const g = state.generations.get(String(state.generation));
  if (g && !g.done) api('GET', `/api/v1/generations/${enc(g.id)}`).then(onGeneration, fail);
}

function onDeviceEvent(d) {
  const prev = state.devices.get(d.uuid);
  d._eventAt = performance.now();
  upsertDevice(d);
  if (!prev || prev.state !== d.state) {
    refreshSoon('dashboard', 1000);
    refreshSoon('batches', 1000); // a newly provisioned device used a key
  }
}

function onAlertEvent(a) {
  a._eventAt = performance.now();
  state.recentAlerts.push(a);
  if (state.recentAlerts.length > 50) state.recentAlerts.shift();
  addRecentAlert(a);
  upsertAlert(a, true);
}

// ---------------------------------------------------------------- dashboard

async function loadDashboard() {
  const [d, pw] = await Promise.all([
    api('GET', '/api/v1/dashboard'),
    api('GET', '/api/v1/password').catch((e) => { fail(e); return null; }),
  ]);
  $('#count-keys-available').textContent = d.keys.available;
  $('#count-keys-used').textContent = d.keys.used;
  $('#count-keys-revoked').textContent = d.keys.revoked;
  $('#count-devices-unmanaged').textContent = d.devices.unmanaged;
  $('#count-devices-managed').textContent = d.devices.managed;
  const list = $('#recent-alerts');
  list.replaceChildren(...d.alerts.map(recentAlertItem));
  if (!d.alerts.length) list.append(h('li', { class: 'empty' }, 'no alerts'));
  if (pw) renderPassword(pw);
}

/** "seen 3 times since …" for a repeated alert, else nothing. */
const seenText = (a) => (a.count > 1 ? `${a.count}× since ${fmtTime(a.at)}` : null);

function recentAlertItem(a) {
  return h('li', { class: 'recent-alert', 'data-alert-id': a.id },
    h('span', { class: 'when' }, fmtTime(a.last_seen)),
    h('span', { class: `sev sev-${a.severity}` }, a.severity),
    h('span', { class: 'msg' }, a.message),
    a.count > 1 ? h('span', { class: 'count' }, ` (${seenText(a)})`) : null);
}

/** Puts a live alert (new, or a repeat of one listed) on top of the dashboard's
 * list, keeping the 10 seen last. */
function addRecentAlert(a) {
  const list = $('#recent-alerts');
  for (const el of $$('.empty', list)) el.remove();
  for (const el of $$('li', list)) if (el.dataset.alertId === String(a.id)) el.remove();
  list.prepend(recentAlertItem(a));
  while (list.children.length > 10) list.lastElementChild.remove();
}

function renderPassword(pw) {
  const el = $('#password-state');
  el.textContent = pw.set
    ? `set${pw.changed_at ? `, last changed ${fmtTime(pw.changed_at)}` : ''}`
    : 'not set: set one before provisioning devices';
  el.classList.toggle('unset', !pw.set);
}

async function onPasswordSubmit(ev) {
  ev.preventDefault();
  const input = $('#password-new');
  await act($('#password-submit'), async () => {
    await api('PUT', '/api/v1/password', { password: input.value });
    input.value = '';
    showStatus('provisioning password changed');
    renderPassword(await api('GET', '/api/v1/password'));
  });
}

// ---------------------------------------------------------------- key batches

async function loadBatches() {
  const [batches, formats] = await Promise.all([api('GET', '/api/v1/batches'), exportFormats()]);
  fillBody($('#batches-table tbody'), batches.map((b) => batchRow(b, formats)), 8, 'no key batches yet');
}

/** Export formats beyond the built-in pdf and setupbin (from plugins); admins only. */
function exportFormats() {
  if (!isAdmin()) return Promise.resolve([]);
  if (!state.formats) {
    state.formats = api('GET', '/api/v1/export-formats')
      .then((fs) => (Array.isArray(fs) ? fs.filter((f) => f.name !== 'pdf' && f.name !== 'setupbin') : []))
      .catch(() => []);
  }
  return state.formats;
}

function batchRow(b, formats) {
  const id = String(b.id);
  const exportUrl = (format) => `/api/v1/batches/${enc(id)}/export?format=${enc(format)}`;
  const actions = [];
  if (isAdmin()) {
    // Plain links: the browser downloads the attachment with the session cookie.
    actions.push(
      h('a', { class: 'btn', href: exportUrl('pdf'), 'data-export': 'pdf', title: 'printable key list' }, 'PDF'),
      h('a', { class: 'btn', href: exportUrl('setupbin'), 'data-export': 'setupbin', title: 'USB key file for one-touch setup' }, 'setup.bin'),
      formats.map((f) => h('a', { class: 'btn', href: exportUrl(f.name), 'data-export': f.name, title: f.description }, f.name)),
      h('button', { type: 'button', 'data-reveal': id, onclick: (ev) => revealKeys(b, ev.currentTarget) }, 'Reveal'),
    );
  }
  actions.push(
    h('button', { type: 'button', 'data-keys': id, onclick: (ev) => listKeys(b, ev.currentTarget) }, 'Keys'),
    h('button', { type: 'button', class: 'danger', 'data-revoke-batch': id, onclick: (ev) => revokeBatch(b, ev.currentTarget) }, 'Revoke'),
  );
  return h('tr', { 'data-batch-id': id },
    td(id), td(fmtTime(b.created_at)), td(b.comment, { class: 'wrap' }),
    numTd(b.size), numTd(b.available), numTd(b.used), numTd(b.revoked),
    h('td', { class: 'actions' }, actions));
}

async function onGenerate(ev) {
  ev.preventDefault();
  const count = Number($('#generate-count').value);
  if (!Number.isInteger(count) || count < 1 || count > 1000000) {
    showStatus('the number of keys must be a whole number from 1 to 1000000', 'error');
    return;
  }
  const comment = $('#generate-comment').value.trim();
  const body = comment ? { count, comment } : { count };
  await act($('#generate-submit'), async () => {
    const r = await api('POST', '/api/v1/batches', body);
    const id = String(r.generation);
    state.generation = id;
    showStatus('batch generation started');
    // An event may already have overtaken the answer.
    const seen = state.generations.get(id);
    renderGeneration(seen || { id, count, generated: 0, done: false });
    $('#generate-comment').value = '';
    if (seen && seen.done) {
      finishGeneration(seen, true);
      return;
    }
    onGeneration(await api('GET', `/api/v1/generations/${enc(id)}`));
  });
}

/** Progress of a generation, from an event or GET /generations/{id}. */
function onGeneration(g) {
  const id = String(g.id);
  const prev = state.generations.get(id);
  if (prev && (prev.done || prev.generated > g.generated)) return; // stale
  state.generations.set(id, g);
  // Show ours; or anyone's while we are not following one of ours.
  const mine = state.generation === id;
  const ours = state.generations.get(String(state.generation));
  if (mine || !ours || ours.done) renderGeneration(g);
  if (g.done) finishGeneration(g, mine);
}

function finishGeneration(g, mine) {
  if (mine) {
    if (g.error) showStatus(`batch generation failed: ${g.error}`, 'error');
    else showStatus(`batch ${g.batch ?? ''} generated: ${plural(g.count, 'key')}`);
  }
  if (state.page === 'batches') loadBatches().catch(fail);
  refreshSoon('dashboard');
}

function renderGeneration(g) {
  $('#generate-progress').hidden = false;
  let text = `generated ${g.generated} of ${g.count}`;
  if (g.done) text += g.error ? `: failed: ${g.error}` : `: done${g.batch != null ? `, batch ${g.batch}` : ''}`;
  $('#generate-progress-text').textContent = text;
  const bar = $('#generate-progress progress');
  bar.max = Math.max(1, g.count);
  bar.value = g.generated;
}

async function revealKeys(b, btn) {
  const ok = window.confirm(
    `Reveal the PPS of every key in batch ${b.id}?\n\n` +
    'Anyone who sees a PID/PPS pair can provision a device with it. ' +
    'The reveal is written to the audit log under your name.');
  if (!ok) return;
  await act(btn, async () => {
    showKeys(b, await api('GET', `/api/v1/batches/${enc(b.id)}/keys?reveal=true`), true);
    showStatus(`keys of batch ${b.id} revealed (audited)`);
  });
}

async function listKeys(b, btn) {
  await act(btn, async () => showKeys(b, await api('GET', `/api/v1/batches/${enc(b.id)}/keys`), false));
}

/** Shows a batch's keys in #revealed-keys; with `revealed`, their PPSs too. */
function showKeys(b, keys, revealed) {
  $('#keys-title').textContent = `Keys of batch ${b.id}${revealed ? ' (PPS revealed)' : ''}`;
  $('#keys-note').textContent = keys.length > MAX_KEYS_SHOWN
    ? `showing the first ${MAX_KEYS_SHOWN} of ${keys.length} keys`
    : plural(keys.length, 'key');
  const table = $('#revealed-keys');
  const heads = ['PID', revealed && 'PPS', 'State', 'Device', ''].filter((x) => x !== false);
  $('thead', table).replaceChildren(h('tr', {}, heads.map((t) => h('th', {}, t))));
  const rows = keys.slice(0, MAX_KEYS_SHOWN).map((k) => h('tr', { 'data-pid': k.pid },
    td(k.pid, { class: 'mono' }),
    revealed && td(k.pps, { class: 'mono' }),
    td(k.state, { 'data-key-state': '' }),
    td(k.device_uuid ? hostOf(k.device_uuid) : null),
    h('td', { class: 'actions' }, k.state === 'available' &&
      h('button', { type: 'button', class: 'danger', 'data-revoke-pid': k.pid, onclick: (ev) => revokeKey(k.pid, ev.currentTarget) }, 'Revoke'))));
  fillBody($('tbody', table), rows, heads.length, 'no keys');
  $('#keys-panel').hidden = false;
  $('#keys-panel').scrollIntoView({ block: 'nearest' });
}

/** Clears the key list (and so any revealed PPS) from the page. */
function hideKeys() {
  $('#keys-panel').hidden = true;
  $('#revealed-keys thead').replaceChildren();
  $('#revealed-keys tbody').replaceChildren();
}

async function revokeBatch(b, btn) {
  if (!window.confirm(`Revoke every available key of batch ${b.id}? Devices can no longer be provisioned with them.`)) return;
  await act(btn, async () => {
    const r = await api('POST', `/api/v1/batches/${enc(b.id)}/revoke`);
    showStatus(`${plural(r.revoked, 'key')} of batch ${b.id} revoked`);
    await loadBatches();
  });
}

async function revokeKey(pid, btn) {
  if (!window.confirm(`Revoke key ${pid}? No device can be provisioned with it afterwards.`)) return;
  await act(btn, async () => {
    const r = await api('POST', '/api/v1/keys/revoke', { pids: [pid] });
    showStatus(`${plural(r.revoked, 'key')} revoked`);
    const row = btn.closest('tr');
    $('[data-key-state]', row).textContent = 'revoked';
    btn.remove();
    await loadBatches();
  });
}

// ---------------------------------------------------------------- devices

const unmanagedBody = () => $('#unmanaged-table tbody');
const managedBody = () => $('#managed-table tbody');
const findRow = (tbody, uuid) => Array.from(tbody.rows).find((r) => r.dataset.uuid === uuid);

/** Every device in `st` ("unmanaged"/"managed"), page by page. */
async function fetchDevices(st) {
  const all = [];
  let total = Infinity;
  while (all.length < total && all.length < MAX_DEVICES) {
    const r = await api('GET', `/api/v1/devices?state=${st}&limit=${DEVICE_PAGE}&offset=${all.length}`);
    total = r.total;
    if (!r.devices.length) break;
    all.push(...r.devices);
  }
  return all;
}

/** A fresh listing of state `st` fetched since `t0`, merged with the device events that
 *  arrived meanwhile (they are newer than the listing). */
function mergeListing(list, st, t0) {
  const out = new Map();
  for (const d of list) {
    const cur = state.devices.get(d.uuid);
    if (cur && cur._eventAt >= t0) continue;
    state.devices.set(d.uuid, d);
    out.set(d.uuid, d);
  }
  const fresh = Array.from(state.devices.values()).filter((d) => d._eventAt >= t0);
  return [...fresh, ...out.values()].filter((d) => d.state === st);
}

/** Agent profiles for the move select; failure or none leaves "agentless" only. */
async function loadProfiles() {
  try {
    const p = await api('GET', '/api/v1/agent-profiles');
    state.profiles = Array.isArray(p) ? p.filter((x) => typeof x === 'string') : [];
  } catch (e) {
    if (e.status === 401) return;
    state.profiles = [];
  }
  const select = $('#move-mode');
  const wanted = ['agentless', ...state.profiles.map((p) => `agent:${p}`)];
  if ($$('option', select).map((o) => o.value).join('\n') === wanted.join('\n')) return;
  const chosen = select.value;
  select.replaceChildren(
    h('option', { value: 'agentless' }, 'agentless'),
    ...state.profiles.map((p) => h('option', { value: `agent:${p}` }, `agent: ${p}`)));
  if ($$('option', select).some((o) => o.value === chosen)) select.value = chosen;
}

async function loadUnmanaged() {
  const t0 = performance.now();
  const [list] = await Promise.all([fetchDevices('unmanaged'), loadProfiles()]);
  const devices = mergeListing(list, 'unmanaged', t0);
  const selected = new Set(selectedUuids());
  fillBody(unmanagedBody(), devices.map((d) => unmanagedRow(d, selected.has(d.uuid))), 7, 'no unmanaged devices');
  updateSelection();
}

async function loadManaged() {
  const t0 = performance.now();
  const devices = mergeListing(await fetchDevices('managed'), 'managed', t0);
  fillBody(managedBody(), devices.map(managedRow), 8, 'no managed devices');
  updateCounts();
}

function unmanagedRow(d, checked) {
  return h('tr', { 'data-uuid': d.uuid, title: d.uuid },
    h('td', { class: 'check' }, h('input', { type: 'checkbox', 'data-select': '', checked, 'aria-label': 'select', onchange: updateSelection })),
    td(d.host_name), td(d.address), td(d.amt_version), td(provisionedAs(d), { 'data-provisioned-as': '' }),
    td(d.provisioned_pid, { class: 'mono' }), td(fmtTime(d.provisioned_at)));
}

/** "ACM, PKI (chain)" / "ACM, PSK": the control mode, the provisioning path and, for
 *  PKI, the provisioning chain used. */
function provisionedAs(d) {
  const mode = d.control_mode ? d.control_mode.toUpperCase() : '-';
  const path = d.provisioning_path ? d.provisioning_path.toUpperCase() : '-';
  return `${mode}, ${path}${d.pki_chain ? ` (${d.pki_chain})` : ''}`;
}

function modeText(d) {
  if (d.management_mode === 'agent') return `agent (${d.agent_profile || '-'})`;
  return d.management_mode || '-';
}

function managedRow(d) {
  const uuid = d.uuid;
  const reach = d.reachable == null ? '-' : d.reachable ? 'yes' : 'no';
  const reachClass = d.reachable == null ? null : d.reachable ? 'good' : 'bad';
  return h('tr', { 'data-uuid': uuid, title: uuid },
    td(d.host_name), td(d.address), td(provisionedAs(d), { 'data-provisioned-as': '' }), td(modeText(d)), td(reach, { class: reachClass }), td(fmtTime(d.last_contact_at)),
    h('td', { 'data-power-state': '' }, state.power.get(uuid) ?? '-'),
    h('td', { class: 'actions' },
      POWER_ACTIONS.map((a) => h('button', {
        type: 'button', 'data-power': a, title: `power ${a}`,
        class: POWER_CONFIRM[a] ? 'danger' : null,
        onclick: (ev) => powerAction(uuid, a, ev.currentTarget),
      }, POWER_LABELS[a])),
      h('span', { class: 'sep' }),
      h('button', { type: 'button', 'data-inventory': '', onclick: (ev) => readInventory(uuid, ev.currentTarget) }, 'Inventory'),
      h('button', { type: 'button', 'data-unmanage': '', onclick: (ev) => unmanage(uuid, ev.currentTarget) }, 'Unmanage')));
}

/** Puts a device (from an event or a local change) into the table of its state. */
function upsertDevice(d) {
  state.devices.set(d.uuid, d);
  const un = unmanagedBody();
  const ma = managedBody();
  const oldUn = findRow(un, d.uuid);
  const oldMa = findRow(ma, d.uuid);
  if (d.state === 'unmanaged') {
    const checked = oldUn ? $('input[data-select]', oldUn).checked : false;
    placeRow(un, oldUn, unmanagedRow(d, checked));
    if (oldMa) removeRow(ma, oldMa, 8, 'no managed devices');
  } else if (d.state === 'managed') {
    placeRow(ma, oldMa, managedRow(d));
    if (oldUn) removeRow(un, oldUn, 7, 'no unmanaged devices');
  }
  updateSelection();
}

/** Updates `old` to look like `row`, or puts `row` first. */
function placeRow(tbody, old, row) {
  for (const r of Array.from(tbody.rows)) if (r.classList.contains('empty')) r.remove();
  if (old) patchRow(old, row);
  else tbody.prepend(row);
}

function copyAttrs(from, to) {
  for (const a of to.getAttributeNames()) if (!from.hasAttribute(a)) to.removeAttribute(a);
  for (const a of from.getAttributeNames()) to.setAttribute(a, from.getAttribute(a));
}

/** Updates the row `old` in place from `fresh`: text cells take the new text, cells
 *  holding controls (checkbox, buttons) stay the same elements, so a checked box or a
 *  button someone is about to click survives a live update. */
function patchRow(old, fresh) {
  const cells = Array.from(fresh.cells);
  if (cells.length !== old.cells.length) {
    old.replaceWith(fresh);
    return;
  }
  copyAttrs(fresh, old);
  cells.forEach((cell, i) => {
    const cur = old.cells[i];
    const plain = (c) => c.children.length === 0;
    if (plain(cell) && plain(cur)) {
      if (cur.textContent !== cell.textContent) cur.textContent = cell.textContent;
      copyAttrs(cell, cur);
    } else if (plain(cell) !== plain(cur)) {
      cur.replaceWith(cell);
    }
  });
}

function removeRow(tbody, row, cols, emptyText) {
  row.remove();
  if (!tbody.rows.length) tbody.append(emptyRow(cols, emptyText));
}

const selectedUuids = () =>
  $$('#unmanaged-table tbody input[data-select]:checked').map((cb) => cb.closest('tr').dataset.uuid);

/** Syncs "select all", the selection count and the device counts with the rows. */
function updateSelection() {
  const boxes = $$('#unmanaged-table tbody input[data-select]');
  const n = boxes.filter((b) => b.checked).length;
  const all = $('#select-all');
  all.checked = boxes.length > 0 && n === boxes.length;
  all.indeterminate = n > 0 && n < boxes.length;
  $('#move-selected').textContent = `${n} selected`;
  updateCounts();
}

function updateCounts() {
  const count = (tb) => Array.from(tb.rows).filter((r) => r.dataset.uuid).length;
  $('#unmanaged-count').textContent = `(${count(unmanagedBody())})`;
  $('#managed-count').textContent = `(${count(managedBody())})`;
}

function onSelectAll() {
  const on = $('#select-all').checked;
  for (const b of $$('#unmanaged-table tbody input[data-select]')) b.checked = on;
  updateSelection();
}

async function onMove() {
  const uuids = selectedUuids();
  if (!uuids.length) {
    showStatus('select the devices to move first', 'error');
    return;
  }
  const choice = $('#move-mode').value;
  const body = choice.startsWith('agent:')
    ? { uuids, mode: 'agent', profile: choice.slice('agent:'.length) }
    : { uuids, mode: 'agentless' };
  const label = body.mode === 'agent' ? `agent: ${body.profile}` : 'agentless';
  await act($('#move-submit'), async () => {
    const r = await api('POST', '/api/v1/devices/manage', body);
    const managed = r.managed || [];
    const failed = r.failed || [];
    let msg = `${plural(managed.length, 'device')} moved to managed (${label})`;
    if (failed.length) msg += `\n${failed.length} failed: ${failed.map((f) => `${hostOf(f.uuid)}: ${f.error}`).join('; ')}`;
    showStatus(msg, failed.length ? 'error' : 'ok');
    // Move the rows now; the server's device events follow with the full records.
    for (const u of managed) {
      const d = state.devices.get(u);
      if (d) upsertDevice({ ...d, state: 'managed', management_mode: body.mode, agent_profile: body.profile ?? null });
    }
    refreshSoon('dashboard');
  });
}

async function powerAction(uuid, action, btn) {
  const question = POWER_CONFIRM[action];
  if (question && !window.confirm(question.replace('%s', hostOf(uuid)))) return;
  await act(btn, async () => {
    const r = await api('POST', `/api/v1/devices/${enc(uuid)}/power`, { action });
    state.power.set(uuid, r.power);
    const row = findRow(managedBody(), uuid);
    if (row) $('[data-power-state]', row).textContent = r.power;
    showStatus(`power: ${r.power}`);
  });
}

async function readInventory(uuid, btn) {
  await act(btn, async () => {
    const inv = await api('POST', `/api/v1/devices/${enc(uuid)}/inventory`);
    $('#inventory-title').textContent = `Inventory of ${hostOf(uuid)}, read ${new Date().toLocaleString()}`;
    $('#inventory').textContent = JSON.stringify(inv, null, 2);
    $('#inventory-panel').hidden = false;
    $('#inventory-panel').scrollIntoView({ block: 'nearest' });
    showStatus(`inventory read from ${hostOf(uuid)}`);
  });
}

async function unmanage(uuid, btn) {
  await act(btn, async () => {
    const r = await api('POST', '/api/v1/devices/unmanage', { uuids: [uuid] });
    const back = r.unmanaged || [];
    showStatus(back.length ? `${hostOf(uuid)} moved back to unmanaged` : `${hostOf(uuid)} was not managed`);
    for (const u of back) {
      const d = state.devices.get(u);
      if (d) upsertDevice({ ...d, state: 'unmanaged', management_mode: null, agent_profile: null });
    }
    refreshSoon('dashboard');
  });
}

// ---------------------------------------------------------------- provisioning certificates

async function loadPki() {
  const chains = await api('GET', '/api/v1/pki/chains');
  fillBody($('#chains-table tbody'), chains.map(chainRow), 6, 'no provisioning chains: import one, or create vprov\'s own root');
}

function chainRow(c) {
  const actions = isAdmin() ? [
    h('button', { type: 'button', 'data-setupbin': c.name, title: 'USB file that makes devices trust this root', onclick: (ev) => downloadSetupBin(c, ev.currentTarget) }, 'setup.bin'),
    h('button', { type: 'button', class: 'danger', 'data-remove-chain': c.name, onclick: (ev) => removeChain(c, ev.currentTarget) }, 'Remove'),
  ] : [];
  const expiry = `${fmtTime(c.not_after)}${c.expires_soon ? ' (renew soon)' : ''}`;
  return h('tr', { 'data-chain': c.name, title: (c.certificates || []).join('\n') },
    td(c.name), h('td', {}, h('div', {}, c.domain), h('div', { class: 'muted' }, c.common_name)),
    h('td', { class: 'hashes' },
      [['SHA-256', c.root_sha256], ['SHA-1', c.root_sha1], ['SHA-384', c.root_sha384]].map(([alg, hex]) =>
        h('div', {}, h('span', { class: 'alg' }, alg), hex))),
    td(expiry, { class: c.expires_soon ? 'expiring' : null, 'data-expiry': '' }),
    h('td', {}, h('div', {}, fmtTime(c.imported_at)), h('div', { class: 'muted' }, c.imported_by)),
    h('td', { class: 'actions' }, actions));
}

/** Reads a chosen file as text, or (with `binary`) as base64. */
function readFile(input, binary) {
  const file = input.files[0];
  if (!file) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onerror = () => reject(new Error(`cannot read ${file.name}`));
    r.onload = () => resolve(binary ? String(r.result).replace(/^data:[^,]*,/, '') : String(r.result));
    if (binary) r.readAsDataURL(file);
    else r.readAsText(file);
  });
}

async function onChainImport(ev) {
  ev.preventDefault();
  await act($('#chain-import-submit'), async () => {
    const [pfx, pem, key] = await Promise.all([
      readFile($('#chain-pfx'), true), readFile($('#chain-pem'), false), readFile($('#chain-key'), false)]);
    if (!pfx === !pem) throw new Error('choose a PFX file or a PEM chain file (not both)');
    const body = { name: $('#chain-name').value.trim() };
    if (pfx) body.pfx_base64 = pfx;
    else body.pem = pem;
    if (key) body.key_pem = key;
    const password = $('#chain-password').value;
    if (password) body.password = password;
    const c = await api('POST', '/api/v1/pki/chains', body);
    $('#chain-import').reset();
    showStatus(`chain ${c.name} imported: leaf ${c.common_name}, domain ${c.domain}, expires ${fmtTime(c.not_after)}`);
    await loadPki();
  });
}

async function onOwnRoot(ev) {
  ev.preventDefault();
  await act($('#own-root-submit'), async () => {
    const c = await api('POST', '/api/v1/pki/own-root', {
      name: $('#own-root-name').value.trim(),
      domain: $('#own-root-domain').value.trim(),
    });
    $('#own-root').reset();
    showStatus(`root ${c.name} created (leaf ${c.common_name}): download its setup.bin for the devices' USB touch`);
    await loadPki();
  });
}

/** Downloads a chain's setup.bin (a POST: it carries the provisioning password and
 *  is audited) and saves it through a temporary link. */
async function downloadSetupBin(c, btn) {
  const body = {};
  const server = $('#setupbin-server').value.trim();
  const port = $('#setupbin-port').value.trim();
  if (server) body.server = server;
  if (port) body.port = Number(port);
  await act(btn, async () => {
    let res;
    try {
      res = await fetch(`/api/v1/pki/chains/${enc(c.name)}/setupbin`, {
        method: 'POST', credentials: 'same-origin', cache: 'no-store',
        headers: { 'Content-Type': 'application/json', 'X-Vprov-Console': '1' },
        body: JSON.stringify(body),
      });
    } catch {
      throw new ApiError(0, 'cannot reach the vprov server');
    }
    if (!res.ok) {
      let msg = `${res.status} ${res.statusText}`.trim();
      try { msg = (await res.json()).error || msg; } catch { /* not JSON */ }
      if (res.status === 401) signedOut('your session has ended: sign in again');
      throw new ApiError(res.status, msg);
    }
    const url = URL.createObjectURL(await res.blob());
    const a = h('a', { href: url, download: 'setup.bin', hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    showStatus(`setup.bin for chain ${c.name} downloaded (audited): it holds the provisioning password`);
  });
}

async function removeChain(c, btn) {
  if (!window.confirm(`Remove provisioning chain ${c.name} and its key? PKI devices needing it can no longer be configured.`)) return;
  await act(btn, async () => {
    await api('DELETE', `/api/v1/pki/chains/${enc(c.name)}`);
    showStatus(`chain ${c.name} removed`);
    await loadPki();
  });
}

// ---------------------------------------------------------------- alerts

const sevRank = (s) => SEVERITIES.indexOf(s);

/** Whether an alert passes the alert page's filters (severity is a minimum, as on the server). */
function alertMatches(a) {
  const min = $('#alert-severity').value;
  if (min && sevRank(a.severity) < sevRank(min)) return false;
  if ($('#alert-unacked').checked && a.acknowledged_at) return false;
  return true;
}

async function loadAlerts() {
  const q = new URLSearchParams({ limit: '100' });
  const min = $('#alert-severity').value;
  if (min) q.set('severity', min);
  if ($('#alert-unacked').checked) q.set('acknowledged', 'false');
  const t0 = performance.now();
  const alerts = await api('GET', `/api/v1/alerts?${q}`);
  fillBody($('#alerts-table tbody'), alerts.map(alertRow), 9, 'no alerts');
  for (const a of state.recentAlerts) if (a._eventAt >= t0) upsertAlert(a, true);
}

function alertRow(a) {
  const ack = a.acknowledged_at
    ? `${a.acknowledged_by ? `${a.acknowledged_by}, ` : ''}${fmtTime(a.acknowledged_at)}`
    : h('button', { type: 'button', 'data-ack': a.id, onclick: (ev) => acknowledge(a, ev.currentTarget) }, 'Acknowledge');
  return h('tr', { 'data-alert-id': a.id, class: a.acknowledged_at ? 'acked' : null },
    td(fmtTime(a.last_seen)),
    td(String(a.count), { title: seenText(a) || 'seen once' }),
    h('td', {}, h('span', { class: `sev sev-${a.severity}` }, a.severity)),
    td(a.source), td(a.address), td(a.pid, { class: 'mono' }),
    td(a.device_uuid ? hostOf(a.device_uuid) : null, { title: a.device_uuid }),
    td(a.message, { class: 'wrap' }),
    h('td', {}, ack));
}

/** Updates an alert's row, or (with `prepend`) adds a new one on top. */
function upsertAlert(a, prepend) {
  const tbody = $('#alerts-table tbody');
  const old = Array.from(tbody.rows).find((r) => r.dataset.alertId === String(a.id));
  if (!alertMatches(a)) {
    if (old) removeRow(tbody, old, 9, 'no alerts');
    return;
  }
  // A repeat (a live event) moves its row on top, like a new alert.
  if (old && prepend) old.remove();
  if (old && !prepend) patchRow(old, alertRow(a));
  else if (prepend) {
    placeRow(tbody, null, alertRow(a));
    while (tbody.rows.length > MAX_ALERT_ROWS) tbody.lastElementChild.remove();
  }
}

async function acknowledge(a, btn) {
  await act(btn, async () => {
    await api('POST', `/api/v1/alerts/${enc(a.id)}/acknowledge`);
    upsertAlert({ ...a, acknowledged_at: new Date().toISOString(), acknowledged_by: state.user.name }, false);
    showStatus('alert acknowledged');
  });
}

// ---------------------------------------------------------------- plugins and audit

const kindsText = (k) => (Array.isArray(k) ? k.join(', ') : k);
const statusTd = (s) => td(s, { class: `wrap ${/^(active|loaded)/.test(s || '') ? 'good' : 'bad'}` });

async function loadPlugins() {
  const p = await api('GET', '/api/v1/plugins');
  fillBody($('#plugins-libraries tbody'), (p.libraries || []).map((l) => h('tr', {},
    td(l.file, { class: 'mono' }), td(l.plugin ?? l.name), td(l.version), td(kindsText(l.kinds)), statusTd(l.status))),
  5, 'no plugin libraries in the plugin directory');
  fillBody($('#plugins-instances tbody'), (p.instances || []).map((i) => h('tr', {},
    td(i.name), td(i.plugin), td(kindsText(i.kinds)), statusTd(i.status))),
  4, 'no plugin instances configured');
}

async function loadAudit() {
  const entries = await api('GET', `/api/v1/audit?limit=${enc($('#audit-limit').value)}`);
  fillBody($('#audit-table tbody'), entries.map((e) => h('tr', { 'data-audit-id': e.id },
    td(fmtTime(e.at)), td(e.actor), td(e.action),
    h('td', { class: 'wrap' }, h('code', {}, e.detail == null ? '' : JSON.stringify(e.detail))))),
  4, 'no audit entries');
}

// ---------------------------------------------------------------- start

function bindStatic() {
  $('#signin').addEventListener('submit', onSignIn);
  $('#signout').addEventListener('click', onSignOut);
  $('#status').addEventListener('click', () => { $('#status').hidden = true; });
  window.addEventListener('hashchange', route);
  // Clicking the link of the page shown reloads it (no hashchange then).
  for (const a of $$('nav a[data-page]')) {
    a.addEventListener('click', () => { if (a.dataset.page === state.page && location.hash === `#/${state.page}`) route(); });
  }
  for (const b of $$('button[data-refresh]')) b.addEventListener('click', route);
  $('#password-form').addEventListener('submit', onPasswordSubmit);
  $('#generate').addEventListener('submit', onGenerate);
  $('#keys-hide').addEventListener('click', hideKeys);
  $('#select-all').addEventListener('change', onSelectAll);
  $('#move-submit').addEventListener('click', onMove);
  $('#inventory-hide').addEventListener('click', () => { $('#inventory-panel').hidden = true; });
  $('#alert-severity').addEventListener('change', () => loadAlerts().catch(fail));
  $('#alert-unacked').addEventListener('change', () => loadAlerts().catch(fail));
  $('#audit-limit').addEventListener('change', () => loadAudit().catch(fail));
  $('#chain-import').addEventListener('submit', onChainImport);
  $('#own-root').addEventListener('submit', onOwnRoot);
}

async function start() {
  bindStatic();
  try {
    enterApp(await api('GET', SESSION));
  } catch (e) {
    if (e.status === 401) {
      // api() already showed the sign-in form; on first run, say how to get an account.
      if (e.body?.admin_accounts === false) {
        $('#signin-hint').textContent = e.message;
        $('#signin-hint').hidden = false;
      }
      return;
    }
    showSignIn();
    $('#signin-error').textContent = e.message;
  }
}

start();
