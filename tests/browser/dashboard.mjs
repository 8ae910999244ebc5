// The dashboard in a real browser: Debian's headless Chromium driven by
// playwright-core (which downloads no browser), against `weir up`'s center
// and a second center on the same stores. Run by tests/e2e/dashboard.rs,
// which starts the processes and passes them in the environment:
//
//   CENTER_A, CENTER_B   base URLs of the two centers
//   HOST_NODE            this host's node id (weir up's agent)
//   DEMO_NODE            one of the demo's simulated nodes
//   VICTIM_NODE, VICTIM_PID, VICTIM_INTERVAL_MS
//                        a separate agent this script kills (SIGKILL)
//   SHOTS                directory for the screenshots
//   CHROMIUM             the browser (default /usr/bin/chromium)
//
// Each step prints one line; the first failure exits 1 with its reason.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`${k} is not set`);
  return v;
};
const A = env("CENTER_A"), B = env("CENTER_B");
const HOST = env("HOST_NODE"), DEMO = env("DEMO_NODE");
const VICTIM = env("VICTIM_NODE"), VICTIM_PID = Number(env("VICTIM_PID"));
const VICTIM_INTERVAL = Number(env("VICTIM_INTERVAL_MS"));
const SHOTS = env("SHOTS");
mkdirSync(SHOTS, { recursive: true });

const step = (msg) => console.log(`ok: ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls `fn` in the page until it returns a truthy value.
async function until(page, what, fn, arg, timeoutMs = 30000) {
  try {
    const h = await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 });
    return await h.jsonValue();
  } catch (e) {
    const seen = await page.evaluate(() => ({
      seq: window.weirDashboard?.state.seq,
      stats: window.weirDashboard?.stats,
      role: window.weirDashboard?.role(),
      nodes: window.weirDashboard ? [...window.weirDashboard.state.nodes.values()].map((n) => `${n.id}:${n.status}`) : null,
    })).catch(() => null);
    throw new Error(`timed out waiting for ${what}: ${e.message.split("\n")[0]}; page state ${JSON.stringify(seen)}`);
  }
}

const rowStatus = (id) => {
  const r = [...document.querySelectorAll("#fleet-table tbody tr")].find((tr) => tr.dataset.id === id);
  return r ? r.className : null;
};

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  // Root in CI containers: Chromium's sandbox needs user namespaces.
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
let failed = false;
try {
  const ctx = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));

  // 1. The fleet shows this host and the demo's nodes, up.
  await page.goto(A + "/");
  await until(page, `${HOST} and ${DEMO} up on the fleet table`, ([h, d]) => {
    const st = (id) => {
      const r = [...document.querySelectorAll("#fleet-table tbody tr")].find((tr) => tr.dataset.id === id);
      return r && r.className;
    };
    return st(h) === "up" && st(d) === "up";
  }, [HOST, DEMO], 60000);
  step("fleet shows this host and the demo nodes up");

  // 2. Lag and throughput are there and move.
  const reading = () => page.evaluate(() => {
    const p = window.weirDashboard.state.pipeline;
    if (!p) return null;
    const access = p.topics.find((t) => t.role === "access");
    const health = p.topics.find((t) => t.role === "health");
    return {
      seq: window.weirDashboard.state.seq,
      accessEnd: access ? access.end : null,
      accessRate: access ? access.produced_per_s : null,
      healthRate: health ? health.produced_per_s : null,
      groups: p.groups.map((g) => g.group),
      consumed: access ? access.consumed.map((c) => c.per_s) : [],
      rps: p.access.req_per_s,
      top: p.access.top.length,
      limiters: p.limiters.length,
      kpiRps: document.getElementById("k-rps").textContent,
    };
  });
  await until(page, "access and health throughput, two groups, top objects and a limiter", () => {
    const p = window.weirDashboard.state.pipeline;
    if (!p) return false;
    const access = p.topics.find((t) => t.role === "access");
    const health = p.topics.find((t) => t.role === "health");
    return access && access.produced_per_s > 0 && access.consumed.some((c) => c.per_s > 0) &&
      health && health.produced_per_s > 0 && p.groups.length >= 2 && p.access.req_per_s > 0 &&
      p.access.top.length > 0 && p.limiters.length > 0;
  }, null, 90000);
  const r1 = await reading();
  await sleep(4000);
  const r2 = await reading();
  if (!(r2.accessEnd > r1.accessEnd && r2.seq > r1.seq)) {
    throw new Error(`throughput does not move: ${JSON.stringify(r1)} then ${JSON.stringify(r2)}`);
  }
  step(`lag and throughput move: access log end ${r1.accessEnd} → ${r2.accessEnd}, ${r2.kpiRps} requests, groups ${r2.groups.join(", ")}`);
  await page.screenshot({ path: `${SHOTS}/dashboard.png`, fullPage: false });
  step("screenshot dashboard.png");

  // 3. Seven tabs on one origin all stay live (one shared connection).
  const tabs = [];
  for (let i = 0; i < 6; i++) {
    const t = await ctx.newPage();
    await t.goto(A + "/");
    tabs.push(t);
  }
  const all = [page, ...tabs];
  const seqs = await Promise.all(all.map((t) => t.evaluate(() => window.weirDashboard.state.seq)));
  for (const [i, t] of all.entries()) {
    await until(t, `tab ${i + 1} of 7 receiving`, (s) => window.weirDashboard.state.seq > s && window.weirDashboard.state.nodes.size > 0, seqs[i], 20000);
  }
  const roles = await Promise.all(all.map((t) => t.evaluate(() => window.weirDashboard.role())));
  if (roles.filter((r) => r === "leader").length !== 1) throw new Error(`expected one leader tab, got ${roles}`);
  step(`seven tabs live (${roles.join(", ")})`);
  for (const t of tabs) await t.close();
  // Closing the leader (the first page here) hands the stream to another tab
  // only when one is left; the first page is still open, so it stays leader.

  // 4. A second center's page.
  // In a window of its own, as a second screen would be: a page in a
  // background tab of the same window is hidden, and Chromium runs a hidden
  // page's timers once a second (the dashboard then catches up from the
  // stream, up to a second late, which nobody sees).
  const ctxB = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  const pageB = await ctxB.newPage();
  await pageB.goto(B + "/");
  await until(pageB, `${HOST} up on the second center`, (h) => {
    const r = [...document.querySelectorAll("#fleet-table tbody tr")].find((tr) => tr.dataset.id === h);
    return r && r.className === "up";
  }, HOST, 30000);

  // 5. A node whose agent stops turns down within its expiry + 1 s, on both
  // centers' pages, without a reload.
  await until(page, `${VICTIM} up`, (v) => {
    const r = [...document.querySelectorAll("#fleet-table tbody tr")].find((tr) => tr.dataset.id === v);
    return r && r.className === "up";
  }, VICTIM, 30000);
  // The moment the row turns down, taken when the page changes it (a
  // MutationObserver runs right after the change) rather than by polling,
  // whose interval would add up to its own length to every measure.
  const watch = (p) => p.evaluate(([v]) => new Promise((resolve) => {
    const table = document.querySelector("#fleet-table");
    const check = () => {
      const r = [...table.querySelectorAll("tbody tr")].find((tr) => tr.dataset.id === v);
      if (r && r.className === "down") {
        obs.disconnect();
        const n = window.weirDashboard.state.nodes.get(v);
        resolve({ at: Date.now(), last: n.last_ms });
      }
    };
    const obs = new MutationObserver(check);
    obs.observe(table, { subtree: true, childList: true, attributes: true, attributeFilter: ["class"] });
    check();
  }), [VICTIM]);
  const downA = watch(page), downB = watch(pageB);
  process.kill(VICTIM_PID, "SIGKILL");
  const killedAt = Date.now();
  const limit = 3 * VICTIM_INTERVAL + 1000;
  for (const [name, w] of [["center A", downA], ["center B", downB]]) {
    const d = await Promise.race([w, sleep(limit + 10000).then(() => null)]);
    if (!d) throw new Error(`${VICTIM} never turned down on ${name}'s page`);
    const late = d.at - d.last;
    if (late > limit) throw new Error(`${VICTIM} turned down ${late} ms after its last report on ${name}'s page (limit ${limit} ms)`);
    step(`${name}: ${VICTIM} down ${late} ms after its last report (expiry + 1 s = ${limit} ms; ${d.at - killedAt} ms after the kill)`);
  }

  // 5b. The filters: "down" shows the victim and only down nodes; the search
  // box narrows to one node; "all" brings every row back, filled.
  const shownRows = () => page.evaluate(() => [...document.querySelectorAll("#fleet-table tbody tr")]
    .filter((tr) => !tr.hidden).map((tr) => ({ id: tr.dataset.id, cls: tr.className, cpu: tr.cells[3].textContent })));
  await page.click('#filters button[data-status="down"]');
  let shown = await shownRows();
  if (!shown.some((r) => r.id === VICTIM) || shown.some((r) => r.cls !== "down")) throw new Error(`"down" filter shows ${JSON.stringify(shown)}`);
  await page.click('#filters button[data-status="all"]');
  await page.fill("#q", HOST);
  shown = await shownRows();
  if (shown.length !== 1 || shown[0].id !== HOST) throw new Error(`search for ${HOST} shows ${JSON.stringify(shown)}`);
  await page.fill("#q", "");
  shown = await shownRows();
  const total = await page.evaluate(() => window.weirDashboard.state.nodes.size);
  if (shown.length !== total || shown.some((r) => !r.cpu.endsWith("%"))) throw new Error(`after clearing the filters: ${shown.length} of ${total} rows, ${JSON.stringify(shown.slice(0, 3))}`);
  step(`filters: "down" shows ${VICTIM}, the search narrows to one node, clearing shows all ${total} rows filled`);

  // 6. Reconnect misses nothing: the stream resumes from Last-Event-ID with
  // the deltas missed while away (no fresh snapshot), without a gap, and
  // the page then agrees with the center.
  const before = await page.evaluate(() => ({ ...window.weirDashboard.stats, seq: window.weirDashboard.state.seq }));
  await page.evaluate(() => window.weirDashboard.reconnect(3000));
  await until(page, "the stream to resume past the pause", (s) => window.weirDashboard.state.seq > s + 3 && window.weirDashboard.stats.connects > 1, before.seq, 20000);
  const after = await page.evaluate(() => ({ ...window.weirDashboard.stats, seq: window.weirDashboard.state.seq }));
  if (after.gaps !== 0) throw new Error(`gaps after reconnect: ${JSON.stringify(after)}`);
  if (after.snapshots !== before.snapshots) throw new Error(`reconnect fell back to a snapshot instead of replaying: ${JSON.stringify(before)} → ${JSON.stringify(after)}`);
  const diff = await page.evaluate(async () => {
    const s = await (await fetch("/api/v1/dashboard")).json();
    const mine = window.weirDashboard.state;
    const out = [];
    for (const n of s.nodes) {
      const m = mine.nodes.get(n.id);
      if (!m) out.push(`missing ${n.id}`);
      else if (n.last_ms - m.last_ms > 3 * n.interval_ms) out.push(`${n.id} behind by ${n.last_ms - m.last_ms} ms`);
    }
    if (mine.nodes.size !== s.nodes.length) out.push(`page has ${mine.nodes.size} nodes, center ${s.nodes.length}`);
    return out;
  });
  if (diff.length) throw new Error(`page and center disagree after reconnect: ${diff.join("; ")}`);
  step(`reconnect replayed ${after.deltas - before.deltas} deltas, no gap, no snapshot; page agrees with the center`);

  // 7. Without JavaScript: the server-rendered table.
  const nojs = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1200, height: 900 } });
  const pn = await nojs.newPage();
  await pn.goto(A + "/");
  const ids = await pn.$$eval("#fleet-table tbody tr", (rs) => rs.map((r) => `${r.dataset.id}:${r.className}`));
  if (!ids.includes(`${HOST}:up`) || !ids.includes(`${VICTIM}:down`)) throw new Error(`no-JS table: ${ids.join(", ")}`);
  const conn = await pn.textContent("#conn");
  if (!conn.includes("server-rendered")) throw new Error(`no-JS page says ${conn}`);
  await pn.screenshot({ path: `${SHOTS}/dashboard-nojs.png` });
  step(`no-JS table renders ${ids.length} nodes`);
  await nojs.close();

  // 8. Phone width: nothing wider than the screen but the tables' own
  // scrolling boxes.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const pp = await phone.newPage();
  await pp.goto(A + "/");
  await until(pp, "the phone page live", () => window.weirDashboard && window.weirDashboard.state.seq > 0, null, 20000);
  const width = await pp.evaluate(() => document.documentElement.scrollWidth);
  if (width > 392) throw new Error(`the page is ${width} px wide on a 390 px screen`);
  await pp.screenshot({ path: `${SHOTS}/dashboard-phone.png`, fullPage: false });
  step(`phone width: page ${width} px on a 390 px screen`);
  await phone.close();

  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
} catch (e) {
  failed = true;
  console.log(`FAILED: ${e.message}`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
