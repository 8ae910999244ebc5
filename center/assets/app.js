// Weir's dashboard: keeps the server-rendered page live from the center's
// stream (/api/v1/dashboard/stream): a snapshot, then merged deltas.
//
// One connection per browser, whatever the number of tabs: browsers allow
// six HTTP/1.1 connections per origin, so seven tabs each holding an
// EventSource would stall the seventh. The tabs elect a leader with the Web
// Locks API; only the leader holds the EventSource and relays every event to
// the other tabs over a BroadcastChannel; a new tab asks the leader for its
// state. When the leader's tab closes, its lock is released and the next tab
// takes over, resuming the stream from the last sequence number it saw
// (`?last_id=`, the center replays what was missed). Browsers without Web
// Locks or BroadcastChannel open their own connection.
"use strict";
(() => {
  const STREAM = "/api/v1/dashboard/stream";
  const HISTORY = 40; // points per sparkline, as the center keeps
  const state = { seq: 0, nodes: new Map(), pipeline: null };
  const stats = { snapshots: 0, deltas: 0, gaps: 0, connects: 0, relayed: 0 };
  let role = "alone";
  let es = null;
  let filter = { status: "all", q: "" };
  const bc = "BroadcastChannel" in window ? new BroadcastChannel("weir-dashboard:" + location.host) : null;
  const $ = (id) => document.getElementById(id);

  // ---- formatting (as the server renders it) ----
  const esc = (s) =>
    String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const rateBytes = (v) => {
    const u = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"];
    let i = 0;
    v = Math.max(0, v || 0);
    while (v >= 1000 && i + 1 < u.length) { v /= 1000; i++; }
    return (i === 0 || v >= 100 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
  };
  const rate = (v) => (v == null ? "–" : v >= 100 ? v.toFixed(0) + "/s" : v.toFixed(1) + "/s");
  const pct = (v) => (v == null ? "–" : Math.round(v * 100) + "%");
  const ago = (ms) => {
    if (!ms || ms <= 0) return "never";
    const s = Math.max(0, Math.floor((Date.now() - ms) / 1000));
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + "m ago";
    if (s < 86400) return Math.floor(s / 3600) + "h ago";
    return Math.floor(s / 86400) + "d ago";
  };
  const spark = (vals) => {
    if (!vals || vals.length < 2) return '<svg class="spark" viewBox="0 0 100 24" aria-hidden="true"></svg>';
    const max = Math.max(...vals), min = Math.min(0, ...vals), span = Math.max(max - min, 1e-9);
    const pts = vals.map((x, i) => (100 * i / (vals.length - 1)).toFixed(1) + "," + (22 - 20 * (x - min) / span).toFixed(1)).join(" ");
    return '<svg class="spark" viewBox="0 0 100 24" preserveAspectRatio="none" aria-hidden="true"><polyline points="' + pts + '"/></svg>';
  };
  // Status follows the clock between deltas too, as the center computes it.
  const statusOf = (n) => {
    const age = Date.now() - n.last_ms, iv = Math.max(1, n.interval_ms);
    if (n.status === "down" || age > 3 * iv) return "down";
    if (age > 2 * iv) return "stale";
    return n.status;
  };

  // ---- rendering ----
  let pending = false;
  const schedule = () => {
    if (pending) return;
    pending = true;
    // A hidden tab gets no animation frames: the table would freeze with a
    // node still shown up. Render it at the end of the current task instead
    // (a microtask: Chromium holds a hidden tab's timers to one a second,
    // which made a node turn down there up to a second late).
    const go = () => { pending = false; render(); };
    if (document.hidden) queueMicrotask(go); else requestAnimationFrame(go);
  };

  const setBody = (id, rows) => {
    const t = $(id);
    if (t) t.tBodies[0].innerHTML = rows.join("");
  };

  function renderPipeline(p) {
    if (!p) return;
    setBody("topics", p.topics.map((t) =>
      "<tr><td>" + esc(t.topic) + " <small>" + t.role + "</small></td><td>" + rate(t.produced_per_s) + "</td><td>" +
      (t.consumed.length ? t.consumed.map((c) => rate(c.per_s) + " <small>" + esc(c.group) + "</small>").join("<br>") : "–") +
      "</td><td>" + t.end + "</td></tr>"));
    setBody("groups", p.groups.map((g) =>
      "<tr><td>" + esc(g.group) + '</td><td><span class="st-' + g.status + '">' + g.status + "</span></td><td>" + g.total_lag +
      "</td><td>" + (g.lag_seconds == null ? "–" : g.lag_seconds.toFixed(1) + "s") + "</td><td>" + g.members + "</td><td>" + spark(g.hist) + "</td></tr>"));
    setBody("access", p.access.nodes.map((n) =>
      "<tr><td>" + esc(n.node_id) + "</td><td>" + rate(n.req_per_s) + "</td><td>" + rateBytes(n.bytes_per_s) + "</td><td>" + pct(n.hit_ratio) + "</td></tr>"));
    setBody("top", p.access.top.map((o) => '<tr><td class="id">' + esc(o.key) + "</td><td>" + o.requests + "</td></tr>"));
    setBody("limiters", p.limiters.map((l) =>
      "<tr><td>" + esc(l.source) + "</td><td>" + esc(l.group) + "</td><td>" + pct(l.fraction) + "</td><td>" + ago(l.at_ms) + "</td></tr>"));
    const lag = p.groups.reduce((a, g) => a + g.total_lag, 0);
    const order = ["ok", "warning", "rewinding", "stalled", "stopped"];
    const worst = p.groups.reduce((w, g) => (order.indexOf(g.status) > order.indexOf(w) ? g.status : w), p.groups.length ? "ok" : "–");
    $("k-rps").textContent = rate(p.access.req_per_s);
    $("k-bw").textContent = rateBytes(p.access.bytes_per_s);
    $("k-hit").textContent = pct(p.access.hit_ratio);
    $("k-lag").textContent = String(lag);
    const ls = $("k-lagstatus");
    ls.textContent = worst;
    ls.className = "st-" + worst;
    $("k-dlq").textContent = p.dead_letters.total == null ? "–" : String(p.dead_letters.total);
    const lim = p.limiters.length ? Math.min(...p.limiters.map((l) => l.fraction)) : null;
    $("k-lim").textContent = pct(lim);
  }

  // The fleet table is kept, not rebuilt: one <tr> per node, made once,
  // moved only when a new node joins, and each render touches only the
  // cells whose value changed (a new report, the status, "3s ago"). With
  // a thousand nodes this is what keeps a tab near idle between reports;
  // rebuilding the table's HTML twice a second cost most of a core.
  const rows = new Map(); // id -> { tr, badge, cells, node, s, ago }
  const byTr = new WeakMap(); // tr -> its row
  // Rows on screen: only they get their values and "ago" written (a
  // thousand-row table mostly lies below the fold, and each text change
  // there would still cost a table layout). A row scrolled into view is
  // filled at once. Status classes are written everywhere: they are rare.
  const inView = new Set();
  const seen = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      const r = byTr.get(e.target);
      if (!r) continue;
      if (e.isIntersecting) {
        inView.add(r);
        const n = state.nodes.get(r.tr.dataset.id);
        if (n && !r.tr.hidden) fillRow(r, n);
      } else inView.delete(r);
    }
  }, { rootMargin: "200px 0px" }) : null;
  let order = [];
  let adopted = false;
  const MAX_SHOWN = 2000; // the counts stay exact; the table is bounded

  function makeRow(id) {
    const tr = document.createElement("tr");
    tr.dataset.id = id;
    tr.innerHTML = '<td><span class="badge"></span></td><td class="id"></td>' + "<td></td>".repeat(7);
    const td = tr.cells;
    td[1].textContent = id;
    const r = { tr, badge: td[0].firstChild, cells: td, node: null, s: null, ago: null };
    byTr.set(tr, r);
    if (seen) seen.observe(tr); else inView.add(r);
    return r;
  }

  function setStatus(r, s) {
    if (r.s === s) return;
    r.tr.className = s;
    r.badge.className = "badge " + s;
    r.badge.textContent = s;
    r.s = s;
  }

  function fillRow(r, n) {
    const a = ago(n.last_ms);
    if (r.ago !== a) { r.cells[2].textContent = a; r.ago = a; }
    if (r.node === n) return; // same report as last time
    r.cells[3].textContent = n.cpu.toFixed(0) + "%";
    r.cells[4].textContent = n.mem.toFixed(0) + "%";
    r.cells[5].textContent = n.load.toFixed(2);
    r.cells[6].textContent = rateBytes(n.rx) + " ↓ · " + rateBytes(n.tx) + " ↑";
    if (!r.node || r.node.cpu_hist !== n.cpu_hist) r.cells[7].innerHTML = spark(n.cpu_hist);
    r.cells[8].textContent = n.reports;
    r.node = n;
  }

  function renderFleet() {
    const t = $("fleet-table");
    if (!t) return;
    const body = t.tBodies[0];
    if (!adopted) { body.textContent = ""; adopted = true; } // the server-rendered rows
    let joined = false;
    for (const id of state.nodes.keys()) {
      if (!rows.has(id)) { rows.set(id, makeRow(id)); joined = true; }
    }
    for (const id of rows.keys()) {
      if (!state.nodes.has(id)) {
        const r = rows.get(id);
        if (seen) seen.unobserve(r.tr);
        inView.delete(r);
        r.tr.remove();
        rows.delete(id);
        joined = true;
      }
    }
    if (joined) {
      order = [...rows.keys()].sort();
      const frag = document.createDocumentFragment();
      for (const id of order) frag.appendChild(rows.get(id).tr);
      body.appendChild(frag);
    }
    const counts = { up: 0, stale: 0, down: 0 };
    const q = filter.q.toLowerCase();
    let shown = 0;
    for (const id of order) {
      const n = state.nodes.get(id), r = rows.get(id);
      const s = statusOf(n);
      counts[s]++;
      setStatus(r, s);
      const want = (filter.status === "all" || filter.status === s) &&
        (!q || id.toLowerCase().includes(q) || (n.service || "").toLowerCase().includes(q)) &&
        shown < MAX_SHOWN;
      if (r.tr.hidden === want) r.tr.hidden = !want;
      if (want) {
        shown++;
        // A new row is filled once wherever it is, so that the table is
        // never blank before the observer has reported.
        if (inView.has(r) || !r.node) fillRow(r, n);
      }
    }
    const total = state.nodes.size;
    $("counts").textContent = total + " nodes · " + counts.up + " up · " + counts.stale + " stale · " + counts.down + " down";
    $("k-nodes").textContent = counts.up + "/" + total;
    for (const b of document.querySelectorAll("#filters button")) {
      const k = b.dataset.status;
      b.classList.toggle("on", k === filter.status);
      b.querySelector("span").textContent = k === "all" ? total : counts[k];
    }
  }

  // The pipeline panels change with each delta that carries them; between
  // deltas only the limiters' "ago" moves, once a second.
  let drawn = { pipeline: null, at: 0 };
  function render() {
    renderFleet();
    const now = Date.now();
    if (state.pipeline !== drawn.pipeline || now - drawn.at >= 1000) {
      renderPipeline(state.pipeline);
      drawn = { pipeline: state.pipeline, at: now };
    }
    document.body.dataset.seq = state.seq;
    armNextTurn(now);
  }

  // The next moment a node turns stale or down by the clock alone: render
  // then, rather than up to a 500 ms tick later (the tick stays, for ages).
  let turnTimer = null;
  function armNextTurn(now) {
    let next = Infinity;
    for (const n of state.nodes.values()) {
      if (n.status === "down") continue;
      const iv = Math.max(1, n.interval_ms);
      for (const at of [n.last_ms + 2 * iv, n.last_ms + 3 * iv]) {
        if (at >= now && at < next) next = at;
      }
    }
    if (turnTimer !== null) clearTimeout(turnTimer);
    turnTimer = next === Infinity ? null : setTimeout(() => { turnTimer = null; schedule(); }, next - now + 1);
  }

  function setupFilters() {
    const f = $("filters");
    f.hidden = false;
    f.innerHTML = ["all", "up", "stale", "down"].map((s) => '<button type="button" data-status="' + s + '">' + s + " <span></span></button>").join("") +
      '<input id="q" type="search" placeholder="filter nodes" aria-label="filter nodes">';
    f.addEventListener("click", (e) => {
      const b = e.target.closest("button");
      if (!b) return;
      filter.status = b.dataset.status;
      render();
    });
    $("q").addEventListener("input", (e) => { filter.q = e.target.value; render(); });
  }

  // ---- the model ----
  function applySnapshot(s) {
    state.nodes = new Map(s.nodes.map((n) => [n.id, n]));
    state.pipeline = s.pipeline;
    state.seq = s.seq;
    stats.snapshots++;
    schedule();
  }

  // Returns false on a gap (a delta not following the last one seen).
  function applyDelta(d) {
    if (d.seq <= state.seq) return true; // already have it
    if (d.seq !== state.seq + 1) { stats.gaps++; return false; }
    for (const n of d.nodes) {
      // Deltas carry no history: extend ours with each new report.
      const old = state.nodes.get(n.id);
      n.cpu_hist = old ? old.cpu_hist : [];
      n.bw_hist = old ? old.bw_hist : [];
      if (!old || n.last_ms > old.last_ms) {
        n.cpu_hist = n.cpu_hist.concat([n.cpu]).slice(-HISTORY);
        n.bw_hist = n.bw_hist.concat([n.rx + n.tx]).slice(-HISTORY);
      }
      state.nodes.set(n.id, n);
    }
    if (d.pipeline) state.pipeline = d.pipeline;
    state.seq = d.seq;
    stats.deltas++;
    schedule();
    return true;
  }

  function receive(kind, data) {
    const v = JSON.parse(data);
    if (kind === "snapshot") { applySnapshot(v); return true; }
    return applyDelta(v);
  }

  const setConn = (text, cls) => { const c = $("conn"); c.textContent = text; c.className = "conn " + cls; };

  function connect(lastId) {
    if (es) es.close();
    stats.connects++;
    es = new EventSource(STREAM + (lastId ? "?last_id=" + lastId : ""));
    const on = (kind) => (e) => {
      const ok = receive(kind, e.data);
      if (bc) { bc.postMessage({ kind, data: e.data }); stats.relayed++; }
      // A gap cannot happen on one stream; if it does, start over cleanly.
      if (!ok) connect(null);
    };
    es.addEventListener("snapshot", on("snapshot"));
    es.addEventListener("delta", on("delta"));
    es.onopen = () => setConn("live" + (role === "leader" ? " · shared with other tabs" : ""), "live");
    es.onerror = () => setConn("reconnecting…", "down");
  }

  function currentSnapshot() {
    return JSON.stringify({ seq: state.seq, nodes: [...state.nodes.values()], pipeline: state.pipeline });
  }

  function start() {
    setupFilters();
    if (bc && navigator.locks) {
      role = "follower";
      setConn("live via another tab", "live");
      bc.onmessage = (m) => {
        const { kind, data } = m.data || {};
        if (kind === "hello") {
          if (role === "leader" && state.seq) bc.postMessage({ kind: "snapshot", data: currentSnapshot() });
          return;
        }
        if (role === "leader") return; // our own stream is the truth
        if ((kind === "snapshot" || kind === "delta") && !receive(kind, data)) bc.postMessage({ kind: "hello" });
      };
      navigator.locks.request("weir-dashboard-stream:" + location.host, () => {
        role = "leader";
        connect(state.seq || null);
        return new Promise(() => {}); // held until the tab goes away
      });
      bc.postMessage({ kind: "hello" });
    } else {
      connect(null);
    }
    // "3s ago" and up → stale → down follow the clock without a delta.
    setInterval(schedule, 500);
  }

  window.weirDashboard = {
    state, stats,
    role: () => role,
    // Drops the connection and resumes from the last event seen, as after a
    // network blip (tests use it; the browser does it by itself on errors).
    reconnect: (pauseMs) => {
      if (role === "follower") return false;
      if (es) es.close();
      setConn("reconnecting…", "down");
      setTimeout(() => connect(state.seq || null), pauseMs || 0);
      return true;
    },
  };
  start();
})();
