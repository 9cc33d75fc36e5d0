// bluegreen dashboard. Plain ES2020, no framework, no build step and nothing
// fetched from elsewhere: the router binary embeds this file and an admin may
// open it with no internet. Everything is drawn from the admin API
// (/api/v1/*, bearer token) and kept current by its event stream.
'use strict';

(() => {
  // -------------------------------------------------------------------------
  // State. Everything the page knows lives in S; render functions read it and
  // never keep their own copies, so a re-fetch simply replaces S's fields.
  // -------------------------------------------------------------------------
  const TOKEN_KEY = 'bluegreen.token';
  const WINDOW_MS = 10 * 60 * 1000; // charts show the last 10 minutes
  const MAX_POINTS = 600;
  const SIDES = ['blue', 'green'];
  const COLORS = { blue: '#0b62d6', green: '#16803c' };
  const STALE_MS = 20000; // no byte on the stream for this long: reconnect

  const S = {};
  function resetState() {
    Object.assign(S, {
      status: null, // last Status (GET /status or `status` event)
      statusAt: 0, // Date.now() when it arrived (drain countdowns count from it)
      pipeline: null, // null until known; false hides the deploy parts
      releases: null, // Sides<SideRelease>
      deploy: null, // current or last DeployRecord
      deploys: [], // past deploys from GET /deploys
      bake: null, // last `bake` event of the current deploy
      switches: [], // switch records, normalised, oldest first
      points: [], // series points, oldest first
      seriesMarks: [], // `switches` of GET /series: {at_ms, to, kind}
      intervalMs: 1000,
      shadow: null,
      zoom: 'deploy', // charts: around the deploy, or the last 10 minutes
      busy: false, // an action POST is under way
      seen: {}, // events received per name: tells a GET answer it may be stale
    });
  }
  resetState();
  let token = null;
  let session = 0; // bumped on login and logout: async work of an old session drops its result
  let streamAbort = null;

  // -------------------------------------------------------------------------
  // Small helpers: DOM building (text only, never innerHTML with data, so
  // versions, reasons and upstream errors cannot inject markup) and formats.
  // -------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }
  // Element.append turns null into the text "null": drop empty parts first.
  const put = (el, ...kids) => el.append(...kids.flat(Infinity).filter((k) => k != null && k !== false));
  const other = (side) => (side === 'blue' ? 'green' : 'blue');
  const sideTag = (side) => h('span', { class: `side-name side-${side}` }, side);
  const pad = (n) => String(n).padStart(2, '0');
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // Local time HH:MM:SS; older than today gets the date in front.
  function fmtTime(ms) {
    if (ms == null) return '–';
    const d = new Date(ms);
    const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (d.toDateString() === new Date().toDateString()) return t;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}`;
  }
  // 340 ms, 1.2 s, 2 min 05 s, 1 h 02 min.
  function fmtDur(ms) {
    if (ms == null || !isFinite(ms)) return '–';
    ms = Math.max(0, ms);
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
    const s = Math.floor(ms / 1000);
    if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${pad(Math.floor(s / 60) % 60)} min`;
  }
  function fmtNum(v) {
    if (v == null || !isFinite(v)) return '–';
    const a = Math.abs(v);
    if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
    if (a >= 1e4) return `${(v / 1e3).toFixed(0)}k`;
    if (a >= 100) return v.toFixed(0);
    return String(+v.toFixed(a >= 10 ? 1 : 2));
  }
  const fmtPct = (r) => (r == null ? '–' : `${fmtNum(r * 100)}%`);
  const fmtMs = (v) => (v == null ? '–' : `${fmtNum(v)} ms`);

  // -------------------------------------------------------------------------
  // API calls. One place adds the token and turns errors into messages; a 401
  // on any call ends the session (the token was changed or revoked).
  // -------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }
  async function api(method, path, body, tok = token) {
    const headers = { Authorization: `Bearer ${tok}`, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(`/api/v1${path}`, init);
    } catch (e) {
      throw new ApiError(0, 'network', `router unreachable (${e.message})`);
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: use the text */ }
    if (res.status === 401) {
      if (tok && tok === token) sessionLost();
      throw new ApiError(401, 'unauthorized', 'wrong token');
    }
    if (!res.ok) {
      const e = data && data.error;
      throw new ApiError(res.status, (e && e.code) || `http_${res.status}`,
        (e && e.message) || text.trim() || `HTTP ${res.status}`);
    }
    return data;
  }

  // GET `path` and hand the answer to `apply`, unless the session changed in
  // between. Optional endpoints (404/409: not configured or not built) call
  // apply(null) instead of showing an error.
  async function load(path, apply, optional = false) {
    const gen = session;
    try {
      const data = await api('GET', path);
      if (gen === session) apply(data);
    } catch (e) {
      if (gen !== session || e.status === 401) return;
      if (optional && (e.status === 404 || e.status === 409)) apply(null);
      else showError(`GET ${path}: ${e.message}`);
    }
  }
  // A status GET answered after a newer event arrived must not undo it.
  function refreshStatus() {
    const seen = { ...S.seen };
    return load('/status', (d) => applyStatus(d, true, seen));
  }
  // Without a pipeline /deploys is a 409: not asked, so the console stays clean.
  const refreshDeploys = () => (S.pipeline === false ? Promise.resolve() : load('/deploys', applyDeploys, true));
  function refreshAll(haveStatus) {
    const seen = { ...S.seen };
    return Promise.all([
      haveStatus ? null : refreshStatus(),
      load('/series', applySeries, true),
      load('/history', (d) => applyHistory(d, seen)),
      refreshDeploys(),
      load('/shadow', (d) => applyShadow(d && 'shadow' in d ? d.shadow : d), true),
    ]);
  }

  // -------------------------------------------------------------------------
  // Login, logout and the session. The token lives only in sessionStorage and
  // in the Authorization header: never in a URL or a cookie.
  // -------------------------------------------------------------------------
  function showView(loggedIn) {
    $('login-view').hidden = loggedIn;
    $('dashboard-view').hidden = !loggedIn;
  }
  async function login(tok, silent) {
    let status;
    try {
      status = await api('GET', '/status', undefined, tok);
    } catch (e) {
      if (e.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        showError(silent ? 'session expired: log in again' : 'wrong token');
      } else {
        showError(`cannot log in: ${e.message}`);
      }
      if (!silent) $('token').select();
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, tok);
    token = tok;
    session += 1;
    resetState();
    clearError();
    $('token').value = '';
    showView(true);
    applyStatus(status, true);
    renderAll();
    refreshAll(true);
    stream(session);
  }
  function logout(message) {
    session += 1;
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (streamAbort) streamAbort.abort();
    const dlg = $('confirm');
    if (dlg.open) dlg.close('no');
    resetState();
    renderAll(); // empties every panel: no data stays on the page
    for (const c of CHARTS) { const cv = $(c.canvas); cv.width = cv.width; } // clears the pixels
    showView(false);
    if (message) showError(message); else clearError();
    $('token').focus();
  }
  const sessionLost = () => logout('the router rejected the token: log in again');

  // -------------------------------------------------------------------------
  // Event stream. EventSource cannot send an Authorization header, so the
  // stream is read with fetch and parsed here. Reconnects with backoff
  // (1 s doubling to 10 s) and re-fetches everything on each connect, since
  // events may have been missed while disconnected.
  // -------------------------------------------------------------------------
  function setConn(live) {
    $('conn').className = `conn ${live ? 'up' : 'down'}`;
    $('conn-text').textContent = live ? 'live' : 'reconnecting…';
  }
  async function stream(gen) {
    let delay = 1000;
    let connects = 0;
    while (gen === session) {
      const ctrl = new AbortController();
      streamAbort = ctrl;
      let lastByte = Date.now();
      const opened = Date.now();
      const watchdog = setInterval(() => {
        if (Date.now() - lastByte > STALE_MS) ctrl.abort();
      }, 2000);
      try {
        const res = await fetch('/api/v1/events', {
          headers: { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' },
          cache: 'no-store',
          signal: ctrl.signal,
        });
        if (res.status === 401) { if (gen === session) sessionLost(); return; }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        if (gen !== session) return;
        setConn(true);
        // Login already fetched everything; a reconnect may have missed events.
        if (connects++ > 0) refreshAll();
        await readEvents(res.body, () => { lastByte = Date.now(); }, (name, data) => {
          if (gen === session) onEvent(name, data);
        });
      } catch (e) {
        // Network error, HTTP error or our own abort: reconnect below.
      } finally {
        clearInterval(watchdog);
      }
      if (gen !== session) return;
      setConn(false);
      if (Date.now() - opened > 10000) delay = 1000; // it had been working
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  }

  // SSE framing: `field: value` lines, a blank line ends an event, lines
  // starting with ':' are comments (keepalives). Only event and data matter.
  async function readEvents(body, onBytes, onEvt) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let name = '';
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      onBytes();
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        let line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          if (data.length) {
            let parsed = null;
            try { parsed = JSON.parse(data.join('\n')); } catch { /* not JSON: skip it */ }
            if (parsed && typeof parsed === 'object') onEvt(name || 'message', parsed);
          }
          name = '';
          data = [];
        } else if (line[0] !== ':') {
          const i = line.indexOf(':');
          const field = i < 0 ? line : line.slice(0, i);
          let val = i < 0 ? '' : line.slice(i + 1);
          if (val[0] === ' ') val = val.slice(1);
          if (field === 'event') name = val;
          else if (field === 'data') data.push(val);
        }
      }
    }
  }

  function onEvent(name, d) {
    S.seen[name] = (S.seen[name] || 0) + 1;
    try {
      handleEvent(name, d);
    } catch (e) {
      console.error(`bluegreen: ${name} event not shown:`, e); // a bug here must not kill the stream
    }
  }
  function handleEvent(name, d) {
    switch (name) {
      case 'status': applyStatus(d, false); break;
      case 'tick': addPoint(d); break;
      case 'switch': addSwitch(d); renderHistory(); scheduleDraw(); break;
      case 'health': applyHealth(d); break;
      case 'deploy': setDeploy(d && !('id' in d) && 'deploy' in d ? d.deploy : d); break;
      case 'bake': S.bake = d; renderDeploy(); renderRelease(); renderHeader(); break;
      case 'shadow': applyShadow(d && !('running' in d) && 'shadow' in d ? d.shadow : d); break;
      case 'tls': refreshStatus(); break; // a certificate came, renewed or was refused
      case 'weight': case 'pause': case 'maintenance': case 'reload': refreshStatus(); break;
      default: break; // unknown events are ignored on purpose
    }
  }

  // -------------------------------------------------------------------------
  // Applying data to S. Each apply re-renders only the parts it touches.
  // -------------------------------------------------------------------------
  // `full`: from GET /status. `seen`: event counts when that GET was sent.
  function applyStatus(st, full, seen) {
    if (!st || !st.sides) return;
    const newer = (name) => seen && (S.seen[name] || 0) !== (seen[name] || 0);
    // Only GET /status says for sure whether a pipeline exists (it adds
    // `releases` then); an event without the keys changes nothing.
    if (full) S.pipeline = 'releases' in st;
    if (newer('status')) { renderPipeline(); return; }
    S.status = st;
    S.statusAt = Date.now();
    if (st.releases) S.releases = st.releases;
    if ('deploy' in st && !newer('deploy')) setDeploy(st.deploy, true);
    if (st.last_switch) addSwitch(st.last_switch);
    renderHeader();
    renderSides();
    renderButtons();
    renderPipeline();
    renderHistory();
    renderCerts();
  }

  // Certificates in use (names, issuer, expiry) and where ACME stands.
  function renderCerts() {
    const st = S.status;
    const certs = (st && st.certificates) || [];
    const acme = st && st.acme;
    $('certs-panel').hidden = !certs.length && !acme;
    const box = $('certs');
    box.replaceChildren();
    const now = Date.now() / 1000;
    if (certs.length) {
      put(box, h('table', null,
        h('thead', null, h('tr', null, h('th', null, 'names'), h('th', null, 'issuer'),
          h('th', null, 'expires'), h('th', null, 'source'))),
        h('tbody', null, certs.map((c) => {
          const left = c.not_after - now;
          const cls = left < 0 ? 'bad' : left < 14 * 86400 ? 'warn' : '';
          return h('tr', null, h('td', null, h('code', null, c.names.join(', '))), h('td', null, c.issuer),
            h('td', { class: cls }, `${fmtTime(c.not_after * 1000)} (${left < 0 ? 'expired' : left > 2 * 86400 ? `in ${Math.floor(left / 86400)} days` : `in ${fmtDur(left * 1000)}`})`),
            h('td', { class: 'muted' }, c.file));
        }))));
    }
    if (acme) {
      put(box, h('p', { class: acme.failures ? 'bad' : 'muted' },
        `ACME for ${acme.domains.join(', ')}: `,
        acme.failures ? `${acme.failures} failed attempt(s), last: ${acme.last_error || '?'}; ` : '',
        `next attempt ${fmtTime(acme.next_attempt * 1000)}`));
    }
  }

  function setDeploy(d, quiet) {
    d = d && d.id != null ? d : null;
    const was = S.deploy;
    S.deploy = d;
    if (!d || (S.bake && S.bake.deploy_id !== d.id)) S.bake = null;
    if (d) S.pipeline = true;
    // A deploy that just finished belongs in the history list.
    if (d && d.outcome !== 'running' && !S.deploys.some((x) => x.id === d.id && x.outcome === d.outcome)) {
      if (!quiet || (was && was.id === d.id && was.outcome === 'running')) refreshDeploys();
    }
    if (!quiet) { renderButtons(); renderPipeline(); renderHistory(); }
    renderDeploy(); renderRelease(); renderHeader(); scheduleDraw();
  }

  function applyDeploys(d) {
    if (!d) { S.pipeline = false; S.deploys = []; renderPipeline(); renderButtons(); return; }
    S.pipeline = true;
    S.deploys = Array.isArray(d) ? d : d.deploys || [];
    if (d.releases) S.releases = d.releases;
    renderPipeline();
    renderSides();
    renderHistory();
  }

  function normSwitch(r) {
    return {
      generation: r.generation,
      at_ms: r.at_ms != null ? r.at_ms : r.at_unix_ms,
      from: r.from || other(r.to),
      to: r.to,
      kind: r.kind || 'switch',
      reason: r.reason || '',
      actor: r.actor || '',
      forced: !!r.forced,
    };
  }
  function addSwitch(r) {
    if (!r || !r.to) return;
    const s = normSwitch(r);
    const same = (x) => (s.generation != null && x.generation != null
      ? x.generation === s.generation
      : x.to === s.to && Math.abs(x.at_ms - s.at_ms) < 2000);
    const i = S.switches.findIndex(same);
    if (i >= 0) S.switches[i] = { ...S.switches[i], ...s };
    else S.switches.push(s);
    S.switches.sort((a, b) => a.at_ms - b.at_ms);
    if (S.switches.length > 1000) S.switches.splice(0, S.switches.length - 1000);
  }
  // GET /history is the whole truth, unless a switch event came meanwhile.
  function applyHistory(d, seen) {
    if (seen && (S.seen.switch || 0) === (seen.switch || 0)) S.switches = [];
    for (const r of (d && d.switches) || []) addSwitch(r);
    renderHistory();
    scheduleDraw();
  }

  function applySeries(d) {
    if (!d) return;
    S.intervalMs = d.interval_ms || 1000;
    const pts = (d.points || []).slice(-MAX_POINTS);
    const last = pts.length ? pts[pts.length - 1].t_ms : -Infinity;
    // Ticks that arrived while the series was on its way are kept.
    S.points = pts.concat(S.points.filter((p) => p.t_ms > last)).slice(-MAX_POINTS);
    S.seriesMarks = (d.switches || []).filter((m) => m && m.at_ms != null && m.to);
    renderNow();
    scheduleDraw();
  }
  function addPoint(p) {
    if (!p || p.t_ms == null) return;
    const pts = S.points;
    const last = pts[pts.length - 1];
    if (last && p.t_ms < last.t_ms) return;
    if (last && p.t_ms === last.t_ms) pts[pts.length - 1] = p;
    else pts.push(p);
    if (pts.length > MAX_POINTS) pts.splice(0, pts.length - MAX_POINTS);
    renderNow();
    scheduleDraw();
  }

  function applyHealth(d) {
    const side = S.status && d && S.status.sides[d.side];
    if (!side) return;
    const u = side.upstreams.find((x) => x.address === d.upstream);
    if (u) {
      u.health = d.health;
      if (d.health === 'unhealthy' && d.reason) u.last_error = d.reason;
      side.healthy = side.upstreams.filter((x) => x.health === 'healthy').length;
    }
    renderSides();
    renderButtons();
  }

  function applyShadow(report) {
    S.shadow = report || null;
    renderShadow();
  }

  // -------------------------------------------------------------------------
  // Rendering: header, side cards, buttons. Cheap enough to redo in full on
  // every status change; ticks only touch the small "now" lines.
  // -------------------------------------------------------------------------
  function renderAll() {
    renderHeader(); renderSides(); renderButtons(); renderPipeline();
    renderRelease(); renderDeploy(); renderShadow(); renderHistory(); renderNow(); scheduleDraw();
  }

  function renderHeader() {
    const st = S.status;
    const live = $('live-side');
    live.textContent = st ? st.live : '';
    // Neutral: colour in the header says health (the badge), not a side.
    live.className = 'side-name big neutral';
    let badge = $('health-badge');
    if (!badge) {
      badge = h('span', { id: 'health-badge', class: 'health-badge', role: 'status' });
      live.after(badge);
    }
    const rh = releaseHealth();
    badge.hidden = !rh;
    if (rh) { badge.className = `health-badge ${rh.cls}`; badge.textContent = rh.word; }
    $('generation').textContent = st ? st.generation : '–';
    const ls = st && st.last_switch;
    $('last-switch').textContent = ls
      ? `last ${ls.kind} ${fmtTime(ls.at_unix_ms)} (${ls.from} → ${ls.to})` : '';
    document.title = st ? `bluegreen: ${st.live} live` : 'bluegreen';
  }

  function renderSides() {
    for (const side of SIDES) {
      const card = $(`side-${side}`);
      const st = S.status && S.status.sides[side];
      const live = !!st && st.role === 'live';
      card.classList.toggle('is-live', live);
      card.replaceChildren();
      if (!st) continue;
      const rel = S.releases && S.releases[side];
      const ups = st.upstreams || [];
      put(card, 
        h('h2', null, sideTag(side), ' ', h('span', { class: `role ${live ? 'live' : 'idle'}` }, st.role)),
        h('dl', { class: 'facts' },
          S.pipeline ? [h('dt', null, 'version'), h('dd', null,
            rel && rel.version ? rel.version : '–',
            rel && rel.version && !rel.running ? h('span', { class: 'muted' }, ' (stopped)') : null)] : null,
          h('dt', null, 'healthy'), h('dd', null, `${st.healthy} / ${ups.length}`),
          // While it drains, what still runs on it is the drain's count.
          h('dt', null, 'in flight'), h('dd', { id: `inflight-${side}` },
            st.draining ? Math.max(st.in_flight, st.draining.remaining) : st.in_flight),
          h('dt', null, 'upgraded'), h('dd', null, st.upgraded)),
        h('p', { class: 'now', id: `now-${side}` }),
        // Routing policies of this side: a weighted split, kept sessions,
        // and (live side) pause or maintenance.
        (() => {
          const top = S.status;
          const split = top.split;
          const share = split ? (split.side === side ? split.basis_points : 10000 - split.basis_points) / 100 : null;
          const ses = top.sessions;
          return h('p', { class: 'policies', id: `policies-${side}` },
            share != null ? h('span', { class: 'badge running' }, `${share}% of clients`) : null,
            ses && ses.pinned_side === side && ses.until_ms
              ? h('span', { class: 'badge waiting' }, `sessions kept until ${fmtTime(ses.until_ms)}`) : null,
            ses ? h('span', { class: 'muted' }, ` ${fmtNum(ses.pinned_requests[side] || 0)} pinned requests`) : null,
            live && top.paused ? h('span', { class: 'badge aborted' }, `paused: ${top.paused.waiting} waiting`) : null,
            live && top.maintenance ? h('span', { class: 'badge failed' }, 'maintenance') : null);
        })(),
        st.draining ? h('p', { class: 'draining' }, 'draining: ', String(st.draining.remaining),
          ' still running, cut in ',
          h('span', { 'data-deadline': S.statusAt + st.draining.deadline_in_ms },
            fmtDur(st.draining.deadline_in_ms))) : null,
        h('ul', { class: 'upstreams' }, ups.map((u) => h('li', null,
          h('i', { class: `dot ${u.health}`, title: u.health }),
          h('code', null, u.address),
          h('span', { class: 'muted' }, ` ${u.health}, ${u.outstanding} outstanding`),
          // An upstream healthy again keeps its last error in the status
          // (its pool's record); shown only while it is not healthy.
          u.last_error && u.health !== 'healthy'
            ? h('div', { class: 'last-error' }, 'last error: ', u.last_error) : null))));
    }
    renderNow();
  }

  // The latest tick per side, shown on the side cards.
  function renderNow() {
    const p = S.points[S.points.length - 1];
    for (const side of SIDES) {
      const el = $(`now-${side}`);
      if (!el) continue;
      const m = p && p.sides && p.sides[side];
      el.textContent = m
        ? `${fmtNum(m.rps)} req/s · ${m.rps > 0 ? fmtPct(m.error_rate) : '–'} errors · p50 ${fmtMs(m.p50_ms)} · p99 ${fmtMs(m.p99_ms)}`
        : '';
      const inflight = $(`inflight-${side}`);
      const drain = S.status && S.status.sides[side] && S.status.sides[side].draining;
      if (m && inflight && m.in_flight != null && !drain) inflight.textContent = m.in_flight;
    }
  }

  const deployRunning = () => !!(S.deploy && S.deploy.outcome === 'running');
  const stepOf = (d, name) => d && (d.steps || []).find((s) => s.step === name);
  const nextStep = (d) => (d.steps || []).find((s) => s.state !== 'done' && s.state !== 'skipped');

  function setButton(id, enabled, text, why) {
    const b = $(id);
    if (text) b.textContent = text;
    b.disabled = !enabled || S.busy;
    b.title = enabled ? '' : why || '';
  }
  function renderButtons() {
    const st = S.status;
    const running = deployRunning();
    const busyWhy = 'a deploy is running: abort it first';
    if (!st) {
      for (const id of ['btn-switch', 'btn-rollback', 'btn-promote', 'btn-abort']) setButton(id, false);
      return;
    }
    setButton('btn-switch', !running, `Switch to ${other(st.live)}`, busyWhy);
    setButton('btn-rollback', !!st.previous && !running,
      st.previous ? `Roll back to ${st.previous}` : 'Roll back',
      running ? busyWhy : 'nothing to roll back to: no switch yet');
    const gate = stepOf(S.deploy, 'gate');
    setButton('btn-promote', running && gate && gate.state === 'running', 'Promote',
      running ? 'the deploy is not waiting at the gate' : 'no deploy running');
    const next = running && nextStep(S.deploy);
    setButton('btn-abort', running && next && next.step !== 'decommission', 'Abort deploy',
      running ? 'too late: the new version is live, use Roll back' : 'no deploy running');
  }

  // Panels that only make sense with a deploy pipeline.
  function renderPipeline() {
    for (const el of document.querySelectorAll('[data-pipeline]')) el.hidden = S.pipeline === false;
  }

  // -------------------------------------------------------------------------
  // Release view: the deploy in progress (or ended in the last 10 minutes)
  // at the top; during the bake the new side against the baseline per
  // metric, with the limits, the window judged, the time left and the
  // verdict. Colour is health: good, breach, inconclusive.
  // -------------------------------------------------------------------------
  const autoRollback = (s) => s.kind === 'rollback' && /^deploy #/.test(s.actor || '');
  const RECENT_MS = 10 * 60 * 1000;
  function releaseShown() {
    const d = S.deploy;
    if (!d || S.pipeline === false) return null;
    if (d.outcome === 'running') return d;
    return d.finished_at_ms && Date.now() - d.finished_at_ms < RECENT_MS ? d : null;
  }
  // {cls, word} of the release now, or null without one.
  function releaseHealth() {
    const d = releaseShown();
    if (!d) return null;
    if (d.outcome === 'rolled_back') return { cls: 'breach', word: 'rolled back' };
    if (d.outcome === 'failed') return { cls: 'breach', word: 'failed' };
    if (d.outcome === 'aborted') return { cls: 'inconclusive', word: 'aborted' };
    if (d.outcome === 'succeeded') return { cls: 'good', word: 'released' };
    const b = S.bake && S.bake.deploy_id === d.id ? S.bake : null;
    const baking = stepOf(d, 'bake') && stepOf(d, 'bake').state === 'running';
    if (b && baking) {
      if (b.verdict === 'breach') return { cls: 'breach', word: 'breach' };
      if (b.verdict === 'ok') return { cls: 'good', word: 'healthy so far' };
      if (b.verdict === 'waiting') return { cls: 'inconclusive', word: 'waiting for traffic' };
      return { cls: 'inconclusive', word: 'inconclusive' };
    }
    const gate = stepOf(d, 'gate');
    if (gate && gate.state === 'running') return { cls: 'inconclusive', word: 'waiting for promote' };
    return { cls: 'inconclusive', word: 'in progress' };
  }
  function renderRelease() {
    const box = $('release');
    const d = releaseShown();
    box.hidden = !d;
    if (!d) return;
    const health = releaseHealth();
    box.className = `card release ${health.cls}`;
    $('release-title').replaceChildren(`Release #${d.id}: `, h('code', null, d.version), ` → ${d.target}`,
      h('span', { class: 'muted' }, ` (from ${d.from}${d.previous_version ? `, ${d.previous_version}` : ''})`));
    const v = $('release-verdict');
    v.className = `verdict ${health.cls}`;
    v.textContent = health.word;
    const b = S.bake && S.bake.deploy_id === d.id ? S.bake : null;
    const view = b && b.view;
    const left = $('release-left');
    left.replaceChildren();
    const baking = stepOf(d, 'bake') && stepOf(d, 'bake').state === 'running';
    if (baking && view && view.ends_at_ms) {
      put(left, 'bake ends in ', h('span', { 'data-deadline': view.ends_at_ms }, fmtDur(view.ends_at_ms - Date.now())));
    } else if (d.outcome !== 'running') {
      put(left, `ended ${fmtTime(d.finished_at_ms)}`);
    }
    $('release-steps').replaceChildren(...(d.steps || []).map((s) =>
      h('li', { class: s.state, title: s.detail || s.state }, s.step)));
    const bakeBox = $('release-bake');
    bakeBox.replaceChildren();
    const breach = d.breach || (b && b.breach);
    if (breach) {
      put(bakeBox, h('p', { class: 'bad' }, h('b', null, 'breach: '), breach.summary,
        d.outcome === 'rolled_back' ? ` — rolled back to ${d.from} automatically` : ''));
    } else if (d.reason && d.outcome !== 'running') {
      put(bakeBox, h('p', { class: d.outcome === 'succeeded' ? '' : 'bad' }, d.reason));
    }
    // The judgment's table: the router's counters, the app's resources and
    // the user's own metrics, each new against baseline with its verdict.
    const report = (view && view.report && view.report.length) ? view.report : (d.report || []);
    if (report.length) {
      const num = (x, unit) => (x == null ? '–' : `${Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 1 ? x.toFixed(2) : x.toFixed(3)}${unit ? ` ${unit}` : ''}`);
      put(bakeBox, h('table', { class: 'compare report' },
        h('thead', null, h('tr', null, h('th', null, view && view.window_number ? `window ${view.window_number}` : 'metric'),
          h('th', null, `new: ${d.target} (${d.version})`), h('th', null, `baseline: ${d.from}`), h('th', null, 'limit'), h('th', null, 'verdict'))),
        h('tbody', null, ...report.map((r) => h('tr', { title: r.detail || '' },
          h('td', null, r.name),
          h('td', { class: r.verdict === 'high' || r.verdict === 'low' ? 'over' : '' }, num(r.new, r.unit)),
          h('td', null, num(r.baseline, r.unit)),
          h('td', { class: 'muted' }, r.limit),
          h('td', { class: r.verdict === 'high' || r.verdict === 'low' ? 'bad' : r.verdict === 'nodata' ? 'muted' : '' },
            r.verdict === 'nodata' ? 'no data' : r.verdict))))));
    } else if (view && (view.window || view.baseline)) {
      const w = view.window || {};
      const base = view.baseline || {};
      const t = view.thresholds || {};
      const ratio = (x, r) => (x != null && r != null ? x * r : null);
      const errLimit = [t.max_error_rate, ratio(base.error_rate > 0 ? base.error_rate : null, t.error_rate_ratio)]
        .filter((x) => x != null);
      const p99Limit = [t.max_p99_ms, ratio(base.p99_ms, t.p99_ratio)].filter((x) => x != null);
      const errMax = errLimit.length ? Math.min(...errLimit) : null;
      const p99Max = p99Limit.length ? Math.min(...p99Limit) : null;
      const row = (name, nv, bv, limit, fmt, over) => h('tr', null, h('td', null, name),
        h('td', { class: over ? 'over' : '' }, fmt(nv)), h('td', null, fmt(bv)), h('td', { class: 'muted' }, limit));
      put(bakeBox, h('table', { class: 'compare' },
        h('thead', null, h('tr', null, h('th', null, view.window_number ? `window ${view.window_number}` : 'bake so far'),
          h('th', null, `new: ${d.target} (${d.version})`), h('th', null, `baseline: ${d.from}`), h('th', null, 'limit'))),
        h('tbody', null,
          row('requests', w.requests, base.requests, t.min_requests != null ? `judged from ${t.min_requests}` : '', (x) => (x == null ? '–' : fmtNum(x)), false),
          row('error rate', w.error_rate, base.error_rate, errMax != null ? `≤ ${fmtPct(errMax)}` : '', fmtPct, errMax != null && w.error_rate > errMax),
          row('p50', w.p50_ms, base.p50_ms, '', fmtMs, false),
          row('p99', w.p99_ms, base.p99_ms, p99Max != null ? `≤ ${fmtMs(p99Max)}` : '', fmtMs, p99Max != null && w.p99_ms > p99Max))));
    }
    if (b && b.detail && baking) put(bakeBox, h('p', { class: 'muted' }, b.detail));
  }

  // -------------------------------------------------------------------------
  // Current deploy panel: steps with state and duration, bake verdict so far.
  // -------------------------------------------------------------------------
  function renderDeploy() {
    const box = $('deploy');
    const d = S.deploy;
    box.replaceChildren();
    if (!d) { put(box, h('p', { class: 'empty' }, 'no deploy running')); return; }
    const running = d.outcome === 'running';
    if (!running) put(box, h('p', { class: 'empty' }, 'no deploy running; the last one:'));
    const now = Date.now();
    put(box, 
      h('p', { class: 'deploy-head' },
        h('b', null, `#${d.id} `), h('code', null, d.version), ' → ', sideTag(d.target),
        h('span', { class: 'muted' }, ` from ${d.from}`, d.previous_version ? ` (${d.previous_version})` : ''),
        ' ', h('span', { class: `badge ${d.outcome}` }, d.outcome.replace('_', ' '))),
      h('p', { class: 'muted' }, `started ${fmtTime(d.created_at_ms)}`,
        d.finished_at_ms ? `, ended ${fmtTime(d.finished_at_ms)} after ${fmtDur(d.finished_at_ms - d.created_at_ms)}` : '',
        d.options && d.options.actor ? ` by ${d.options.actor}` : '',
        d.options && d.options.manual_promote ? ', manual promote' : '',
        d.options && d.options.reason ? ` (${d.options.reason})` : ''),
      d.reason ? h('p', { class: d.outcome === 'succeeded' ? '' : 'bad' }, d.reason) : null,
      h('table', { class: 'steps' },
        h('thead', null, h('tr', null, h('th', null, 'step'), h('th', null, 'state'),
          h('th', { class: 'num' }, 'duration'), h('th', null, 'detail'))),
        h('tbody', null, (d.steps || []).map((s) => h('tr', null,
          h('td', null, s.step),
          h('td', null, h('span', { class: `badge ${s.state}` }, s.state)),
          h('td', { class: 'num' }, s.finished_at_ms != null && s.started_at_ms != null
            ? fmtDur(s.finished_at_ms - s.started_at_ms)
            : s.state === 'running' && s.started_at_ms != null
              ? h('span', { 'data-since': s.started_at_ms }, fmtDur(now - s.started_at_ms)) : ''),
          h('td', { class: 'detail' }, s.detail || ''))))),
      d.breach ? h('p', { class: 'bad' }, `breach: ${d.breach.summary}`) : null);
    const b = S.bake;
    if (b && b.deploy_id === d.id && running) {
      const w = b.window;
      put(box, h('p', { class: 'bake' }, 'bake verdict so far: ',
        h('span', { class: `badge ${b.verdict}` }, b.verdict), ' ', b.detail || '',
        w && w.requests != null
          ? h('span', { class: 'muted' }, ` (${w.requests} requests, ${w.errors || 0} errors, ${fmtPct(w.requests ? (w.errors || 0) / w.requests : 0)})`)
          : null));
    }
  }

  // -------------------------------------------------------------------------
  // Shadow report: counts, one row per endpoint, fields that differ on demand.
  // -------------------------------------------------------------------------
  // Shape: ShadowReport (bluegreen-router/src/shadow.rs), totals flattened in.
  function renderShadow() {
    const box = $('shadow');
    const r = S.shadow;
    box.replaceChildren();
    if (!r) { put(box, h('p', { class: 'empty' }, 'shadowing off')); return; }
    const opts = r.options || {};
    const percent = r.percent != null ? r.percent : opts.percent;
    const count = (label, v, cls) => (v == null ? null
      : h('span', { class: `count ${cls || ''}` }, h('b', null, fmtNum(v)), ` ${label}`));
    const lat = (x) => (x ? `${fmtMs(x.p50_ms)} / ${fmtMs(x.p99_ms)}` : '–');
    const limits = [opts.duration_ms ? `for ${fmtDur(opts.duration_ms)}` : '', opts.requests ? `up to ${opts.requests} requests` : '']
      .filter(Boolean).join(', ');
    put(box,
      h('p', null, h('span', { class: `badge ${r.running ? 'running' : 'pending'}` }, r.running ? 'running' : 'stopped'),
        ` ${percent != null ? `${fmtNum(percent)}% of` : ''} live traffic`,
        r.live_side ? [' from ', sideTag(r.live_side), ' mirrored to ', sideTag(r.idle_side || other(r.live_side))]
          : ' mirrored to the idle side',
        h('span', { class: 'muted' }, r.started_at_ms ? ` since ${fmtTime(r.started_at_ms)}` : '',
          r.stopped_at_ms ? `, stopped ${fmtTime(r.stopped_at_ms)}` : '', limits ? ` (${limits})` : '')),
      h('p', { class: 'counts' }, count('mirrored', r.mirrored), count('compared', r.compared),
        count('differing', r.differing, r.differing ? 'bad' : ''), count('errors', r.errors, r.errors ? 'bad' : ''),
        count('dropped', r.dropped), count('skipped', r.skipped), count('stale', r.stale),
        count('in flight', r.in_flight)),
      r.live || r.idle ? h('p', { class: 'muted' }, `p50 / p99 over all compared pairs: live ${lat(r.live)}, idle ${lat(r.idle)}`) : null);
    const eps = (r.endpoints || []).slice().sort((a, b) => (b.diff_rate || 0) - (a.diff_rate || 0));
    if (!eps.length) { put(box, h('p', { class: 'empty' }, 'nothing compared yet')); return; }
    put(box, h('table', { class: 'shadow' },
      h('thead', null, h('tr', null, h('th', null, 'endpoint'), h('th', { class: 'num' }, 'requests'),
        h('th', { class: 'num' }, 'differ'), h('th', { class: 'num' }, 'errors'),
        h('th', { class: 'num' }, 'live p50 / p99'), h('th', { class: 'num' }, 'idle p50 / p99'))),
      eps.map((e) => h('tbody', null,
        h('tr', null,
          h('td', null, h('code', null, e.endpoint)),
          h('td', { class: 'num' }, fmtNum(e.requests)),
          h('td', { class: `num ${e.differing ? 'bad' : ''}` }, `${fmtNum(e.differing || 0)} (${fmtPct(e.diff_rate || 0)})`),
          h('td', { class: `num ${e.errors ? 'bad' : ''}` }, fmtNum(e.errors || 0)),
          h('td', { class: 'num' }, lat(e.live)),
          h('td', { class: 'num' }, lat(e.idle))),
        (e.fields && e.fields.length) || (e.noise && e.noise.length)
          ? h('tr', { class: 'fields' }, h('td', { colspan: 6 }, shadowFields(e)))
          // Nothing differs yet: show what was compared, so "0" is not a mystery.
          : e.compared && e.compared.length
            ? h('tr', { class: 'fields' }, h('td', { colspan: 6, class: 'muted' },
              'identical so far, e.g. ', e.compared.map((x, i) => [i ? ', ' : '', h('code', null, x)])))
            : null))));
  }
  function shadowFields(e) {
    const fields = (e.fields || []).slice().sort((a, b) => b.count - a.count);
    return h('details', null,
      h('summary', null, `${fields.length} differing field${fields.length === 1 ? '' : 's'}`,
        e.noise && e.noise.length ? h('span', { class: 'muted' }, ` · ignored as noise: ${e.noise.join(', ')}`) : ''),
      h('ul', null, fields.slice(0, 10).map((f) => h('li', null,
        h('code', null, f.field), ` differs ${f.count}×`,
        h('ul', { class: 'examples' }, (f.examples || []).slice(0, 3).map((x) => h('li', null,
          h('code', null, x.request), ': live ', h('code', { class: 'val' }, x.live),
          ', idle ', h('code', { class: 'val' }, x.idle))))))));
  }

  // -------------------------------------------------------------------------
  // History: switches and deploys in one list, newest first.
  // -------------------------------------------------------------------------
  function renderHistory() {
    const box = $('history');
    box.replaceChildren();
    const rows = S.switches.map((s) => ({
      at: s.at_ms,
      kind: autoRollback(s) ? 'automatic rollback' : s.kind,
      what: [sideTag(s.from), ' → ', sideTag(s.to), s.generation != null ? h('span', { class: 'muted' }, ` gen ${s.generation}`) : null],
      // A deploy's own rollback skips the health check on purpose (the old
      // side served moments ago): not an operator's override.
      detail: [s.reason, s.forced && !autoRollback(s) ? h('b', { class: 'bad' }, ' (forced)') : null],
      actor: s.actor,
    }));
    const deploys = S.deploys.slice();
    if (S.deploy && !deploys.some((d) => d.id === S.deploy.id)) deploys.push(S.deploy);
    for (const d of deploys) {
      rows.push({
        at: d.created_at_ms,
        kind: 'deploy',
        what: [h('code', null, d.version), ' → ', sideTag(d.target), h('span', { class: 'muted' }, ` #${d.id}`)],
        detail: [h('span', { class: `badge ${d.outcome}` }, d.outcome.replace('_', ' ')),
          d.finished_at_ms ? ` after ${fmtDur(d.finished_at_ms - d.created_at_ms)}` : '',
          d.reason ? ` ${d.reason}` : ''],
        actor: d.options && d.options.actor,
      });
    }
    rows.sort((a, b) => b.at - a.at);
    if (!rows.length) { put(box, h('p', { class: 'empty' }, 'nothing yet')); return; }
    put(box, h('table', { class: 'history' },
      h('thead', null, h('tr', null, h('th', null, 'time'), h('th', null, 'kind'),
        h('th', null, 'what'), h('th', null, 'reason / outcome'), h('th', null, 'by'))),
      h('tbody', null, rows.slice(0, 200).map((r) => h('tr', null,
        h('td', { class: 'time' }, fmtTime(r.at)), h('td', null, r.kind), h('td', null, r.what),
        h('td', { class: 'detail' }, r.detail), h('td', { class: 'muted' }, r.actor || ''))))));
  }

  // -------------------------------------------------------------------------
  // Charts, drawn by hand on canvas. One redraw per animation frame at most,
  // however many ticks arrive; nothing is drawn while the tab is hidden. The
  // time axis ends at the newest point, so server and browser clocks need not
  // agree.
  // -------------------------------------------------------------------------
  const metric = (side, key) => (p) => {
    const m = p.sides && p.sides[side];
    return m && m[key] != null ? m[key] : null;
  };
  const CHARTS = [
    { canvas: 'chart-rps', legend: 'legend-rps', floor: 1, fmt: fmtNum,
      lines: SIDES.map((s) => ({ side: s, get: metric(s, 'rps'), fmt: (v) => `${fmtNum(v)}/s` })) },
    { canvas: 'chart-errors', legend: 'legend-errors', floor: 1, cap: 100, fmt: (v) => `${fmtNum(v)}%`,
      // A side with no requests has no error rate: a gap, not a zero.
      lines: SIDES.map((s) => ({
        side: s,
        get: (p) => { const m = p.sides && p.sides[s]; return m && m.rps > 0 && m.error_rate != null ? m.error_rate * 100 : null; },
        fmt: (v) => `${fmtNum(v)}%`,
      })) },
    { canvas: 'chart-latency', legend: 'legend-latency', floor: 1, fmt: (v) => `${fmtNum(v)} ms`,
      lines: SIDES.flatMap((s) => [
        { side: s, get: metric(s, 'p50_ms'), fmt: fmtNum, dash: true },
        { side: s, get: metric(s, 'p99_ms'), fmt: fmtMs },
      ]) },
  ];
  let drawPending = false;
  function scheduleDraw() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => { drawPending = false; drawAll(); });
  }
  function drawAll() {
    if ($('dashboard-view').hidden) return;
    const last = S.points[S.points.length - 1];
    const end = last ? last.t_ms : Date.now();
    for (const c of CHARTS) { drawChart(c, end); drawLegend(c, last); }
  }
  function niceCeil(v) {
    const e = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= v * 0.9999) return m * e;
    return 10 * e;
  }
  function drawChart(c, end) {
    const cv = $(c.canvas);
    const w = cv.clientWidth;
    const ht = cv.clientHeight;
    if (!w || !ht) return;
    const dpr = window.devicePixelRatio || 1;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(ht * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(ht * dpr);
    }
    const ctx = cv.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, ht);
    const L = 54; const R = 8; const T = 28; const B = 20;
    const pw = w - L - R; const ph = ht - T - B;
    const t0 = chartStart(end);
    const span = Math.max(end - t0, 10000);
    const x = (t) => L + ((t - t0) / span) * pw;
    const pts = S.points.filter((p) => p.t_ms >= t0);
    let max = 0;
    for (const p of pts) for (const ln of c.lines) { const v = ln.get(p); if (v != null && v > max) max = v; }
    max = niceCeil(Math.max(max * 1.05, c.floor));
    if (c.cap) max = Math.min(max, c.cap);
    const y = (v) => T + ph - (Math.min(v, max) / max) * ph;

    // Grid: 0, half and max, labelled; time ticks every 2 minutes.
    ctx.font = '11px system-ui, -apple-system, "Segoe UI", sans-serif';
    ctx.lineWidth = 1;
    ctx.setLineDash([]);
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    for (const f of [0, 0.5, 1]) {
      const yy = Math.round(y(max * f)) + 0.5;
      ctx.strokeStyle = f === 0 ? '#8c959f' : '#e1e6eb';
      ctx.beginPath(); ctx.moveTo(L, yy); ctx.lineTo(L + pw, yy); ctx.stroke();
      ctx.fillStyle = '#57606a';
      ctx.fillText(c.fmt(max * f), L - 6, yy);
    }
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    const tick = span > 5 * 60 * 1000 ? 2 * 60 * 1000 : span > 2 * 60 * 1000 ? 60 * 1000 : 15 * 1000;
    for (let t = Math.ceil(t0 / tick) * tick; t <= end; t += tick) {
      const xx = Math.round(x(t)) + 0.5;
      ctx.strokeStyle = '#8c959f';
      ctx.beginPath(); ctx.moveTo(xx, T + ph); ctx.lineTo(xx, T + ph + 4); ctx.stroke();
      const d = new Date(t);
      const label = tick < 60000 ? `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` : `${pad(d.getHours())}:${pad(d.getMinutes())}`;
      ctx.fillText(label, Math.min(Math.max(xx, L + 16), L + pw - 16), T + ph + 6);
    }

    // Which side was live: a faint tint of its colour behind the plot.
    const iv = S.intervalMs;
    // Consecutive seconds with one live side are one rectangle (no seams).
    ctx.globalAlpha = 0.07;
    let run = null;
    const flush = () => {
      if (!run) return;
      ctx.fillStyle = COLORS[run.side];
      ctx.fillRect(run.x0, T, run.x1 - run.x0, ph);
      run = null;
    };
    for (const p of pts) {
      const x0 = Math.max(L, x(p.t_ms - iv));
      const x1 = x(p.t_ms);
      if (run && (run.side !== p.live || x0 - run.x1 > 1)) flush();
      if (!COLORS[p.live]) continue;
      if (run) run.x1 = x1; else run = { side: p.live, x0, x1 };
    }
    flush();
    ctx.globalAlpha = 1;

    // Switch markers: dashed line in the colour of the side that went live,
    // labelled above the plot; labels that would overlap take a second row.
    ctx.textBaseline = 'top';
    const rowEnd = [-Infinity, -Infinity];
    for (const m of switchMarks(t0, end + iv)) {
      const xx = Math.round(x(Math.min(m.at_ms, end))) + 0.5;
      const label = `→${m.to} ${autoRollback(m) ? 'auto rollback' : m.kind}`;
      const lw = ctx.measureText(label).width;
      const left = Math.min(xx + 3, L + pw - lw); // keep it inside the plot
      let row = rowEnd.findIndex((e) => e < left - 4);
      if (row < 0) row = 1;
      rowEnd[row] = left + lw;
      const top = 1 + row * 12;
      ctx.strokeStyle = COLORS[m.to] || '#555';
      ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(xx, top + 11); ctx.lineTo(xx, T + ph); ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = COLORS[m.to] || '#555';
      ctx.textAlign = 'left';
      ctx.fillText(label, left, top);
    }

    // The lines; a missing value or a missing second is a gap.
    ctx.lineJoin = 'round';
    for (const ln of c.lines) {
      ctx.strokeStyle = COLORS[ln.side];
      ctx.lineWidth = ln.dash ? 1.25 : 1.75;
      ctx.setLineDash(ln.dash ? [4, 3] : []);
      ctx.beginPath();
      let pen = false;
      let prevT = null;
      for (const p of pts) {
        const v = ln.get(p);
        if (v == null || (prevT != null && p.t_ms - prevT > 2.5 * iv)) pen = false;
        if (v != null) {
          const xx = x(p.t_ms); const yy = y(v);
          if (pen) ctx.lineTo(xx, yy); else ctx.moveTo(xx, yy);
          pen = true;
        }
        prevT = p.t_ms;
      }
      ctx.stroke();
    }
    ctx.setLineDash([]);
    if (!pts.length) {
      ctx.fillStyle = '#57606a';
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText('no data yet', L + pw / 2, T + ph / 2);
    }
  }
  // Where the charts start: a minute before the release's switch (or its
  // start) to now while one is shown, else the last 10 minutes.
  function chartStart(end) {
    const d = S.zoom === 'deploy' && releaseShown();
    if (d) {
      const sw = stepOf(d, 'switch');
      const from = sw && sw.started_at_ms ? sw.started_at_ms : d.created_at_ms;
      return Math.max(end - WINDOW_MS, Math.min(from - 60000, end - 30000));
    }
    return end - WINDOW_MS;
  }
  function setZoom(z) {
    S.zoom = z;
    $('zoom-deploy').setAttribute('aria-pressed', String(z === 'deploy'));
    $('zoom-10m').setAttribute('aria-pressed', String(z === '10m'));
    scheduleDraw();
  }
  // Legend with the newest value of every line.
  // Switches between t0 and t1 from history, events and the series, once each.
  function switchMarks(t0, t1) {
    const marks = [];
    for (const m of S.switches.concat(S.seriesMarks)) {
      if (m.at_ms < t0 || m.at_ms > t1) continue;
      if (!marks.some((x) => x.to === m.to && Math.abs(x.at_ms - m.at_ms) < 2000)) marks.push(m);
    }
    return marks.sort((a, b) => a.at_ms - b.at_ms);
  }

  // One key per side: its colour, its name, the newest value of each line.
  function drawLegend(c, last) {
    $(c.legend).replaceChildren(...SIDES.map((side) => {
      const lines = c.lines.filter((ln) => ln.side === side);
      const vals = lines.map((ln) => { const v = last ? ln.get(last) : null; return v == null ? '–' : ln.fmt(v); });
      return h('span', { class: 'key' }, h('i', { class: `swatch ${side}` }), `${side} `, h('b', null, vals.join(' / ')));
    }));
  }

  // -------------------------------------------------------------------------
  // Actions: every POST goes through one confirmation dialog that says
  // exactly what will happen. Results arrive on the event stream; the status
  // is fetched once more in case the stream is down.
  // -------------------------------------------------------------------------
  function ask({ title, text, detail, yes, danger, reason, force }) {
    const dlg = $('confirm');
    if (dlg.open) return Promise.resolve(null);
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-detail').textContent = detail || '';
    $('confirm-detail').hidden = !detail;
    $('confirm-yes').textContent = yes;
    $('confirm-yes').className = danger ? 'danger' : 'primary';
    $('confirm-reason-row').hidden = !reason;
    $('confirm-reason').value = '';
    $('confirm-force-row').hidden = !force;
    $('confirm-force').checked = false;
    dlg.returnValue = '';
    return new Promise((resolve) => {
      dlg.addEventListener('close', () => {
        resolve(dlg.returnValue === 'yes'
          ? { reason: $('confirm-reason').value.trim(), force: $('confirm-force').checked }
          : null);
      }, { once: true });
      dlg.showModal();
      $('confirm-no').focus();
    });
  }

  async function act(label, path, body, done) {
    S.busy = true;
    renderButtons();
    try {
      const r = await api('POST', path, body);
      clearError();
      notice(r && r.message ? r.message : done || `${label}: done`);
    } catch (e) {
      if (e.status !== 401) showError(`${label} failed: ${e.message}`);
    } finally {
      S.busy = false;
      renderButtons();
    }
    if (token) refreshStatus();
  }

  function drainNote() {
    const ms = S.status && S.status.drain_timeout_ms;
    return ms ? ` Requests already running there may finish (up to ${fmtDur(ms)}).` : '';
  }
  function healthNote(side) {
    const st = S.status.sides[side];
    const n = (st.upstreams || []).length;
    return st.healthy < n
      ? ` Only ${st.healthy} of ${n} ${side} upstreams are healthy: without force the router refuses if none is.` : '';
  }

  async function onSwitch() {
    const st = S.status;
    if (!st) return;
    const from = st.live;
    const to = other(from);
    const rel = S.releases && S.releases[to];
    const ans = await ask({
      title: 'Switch live traffic',
      text: `Switch live traffic from ${from} to ${to}?`,
      detail: `New requests go to ${to}${rel && rel.version ? ` (${rel.version})` : ''} at once.${drainNote()}${healthNote(to)}`,
      yes: `Switch to ${to}`, reason: true, force: true,
    });
    if (!ans) return;
    await act('switch', '/switch', { to, force: ans.force, actor: 'dashboard', reason: ans.reason || 'switch from the dashboard' });
  }
  async function onRollback() {
    const st = S.status;
    if (!st || !st.previous) return;
    const rel = S.releases && S.releases[st.previous];
    const ans = await ask({
      title: 'Roll back',
      text: `Roll live traffic back from ${st.live} to ${st.previous}?`,
      detail: rel && rel.version && !rel.running
        ? `${st.previous} was stopped, so ${rel.version} is deployed to it again through the pipeline before traffic moves.`
        : `New requests go to ${st.previous} at once.${drainNote()}${healthNote(st.previous)}`,
      yes: `Roll back to ${st.previous}`, danger: true, reason: true, force: true,
    });
    if (!ans) return;
    await act('rollback', '/rollback', { force: ans.force, actor: 'dashboard', reason: ans.reason || 'rollback from the dashboard' });
  }
  async function onPromote() {
    const d = S.deploy;
    if (!deployRunning()) return;
    const ans = await ask({
      title: 'Promote deploy',
      text: `Promote deploy #${d.id} (${d.version}): switch live traffic from ${d.from} to ${d.target}?`,
      detail: `The deploy leaves the gate, switches, then bakes; a breach during the bake rolls back to ${d.from}.`,
      yes: 'Promote',
    });
    if (!ans) return;
    await act('promote', '/promote', undefined, `deploy #${d.id} promoted: switching to ${d.target}`);
  }
  async function onAbort() {
    const d = S.deploy;
    if (!deployRunning()) return;
    const sw = stepOf(d, 'switch');
    const switched = sw && sw.state === 'done';
    const ans = await ask({
      title: 'Abort deploy',
      text: `Abort deploy #${d.id} (${d.version} to ${d.target})?`,
      detail: switched
        ? `The new version is live and baking: live traffic goes back to ${d.from}.`
        : `Live traffic stays on ${d.from}; nothing live changes.`,
      yes: 'Abort deploy', danger: true, reason: true,
    });
    if (!ans) return;
    await act('abort', '/abort', { actor: 'dashboard', reason: ans.reason || 'aborted from the dashboard' },
      `abort of deploy #${d.id} requested`);
  }

  // -------------------------------------------------------------------------
  // Messages: #error stays until dismissed or replaced; #notice fades.
  // -------------------------------------------------------------------------
  function showError(msg) {
    $('error-text').textContent = msg;
    $('error').hidden = false;
  }
  function clearError() {
    $('error').hidden = true;
    $('error-text').textContent = '';
  }
  let noticeTimer = 0;
  function notice(msg) {
    $('notice').textContent = msg;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { $('notice').textContent = ''; }, 8000);
  }

  // Countdowns (drain deadlines) and running step durations, once a second.
  function updateClocks() {
    const now = Date.now();
    // A release ended ten minutes ago leaves the top of the page.
    if (!$('release').hidden && !releaseShown()) { renderRelease(); renderHeader(); scheduleDraw(); }
    for (const el of document.querySelectorAll('[data-deadline]')) el.textContent = fmtDur(+el.dataset.deadline - now);
    for (const el of document.querySelectorAll('[data-since]')) el.textContent = fmtDur(now - +el.dataset.since);
  }

  // -------------------------------------------------------------------------
  // Start: wire the controls, then log in with a stored token if there is one.
  // -------------------------------------------------------------------------
  function start() {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const tok = $('token').value.trim();
      if (tok) login(tok, false); else showError('enter the admin token');
    });
    $('btn-logout').addEventListener('click', () => logout());
    $('error-close').addEventListener('click', clearError);
    $('confirm-no').addEventListener('click', () => $('confirm').close('no'));
    $('btn-switch').addEventListener('click', onSwitch);
    $('btn-rollback').addEventListener('click', onRollback);
    $('btn-promote').addEventListener('click', onPromote);
    $('btn-abort').addEventListener('click', onAbort);
    $('zoom-deploy').addEventListener('click', () => setZoom('deploy'));
    $('zoom-10m').addEventListener('click', () => setZoom('10m'));
    if (window.ResizeObserver) {
      const ro = new ResizeObserver(scheduleDraw);
      for (const c of CHARTS) ro.observe($(c.canvas));
    }
    window.addEventListener('resize', scheduleDraw);
    setInterval(updateClocks, 1000);
    showView(false);
    renderAll();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) login(saved, true);
  }
  start();
})();
