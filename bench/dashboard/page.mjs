// Holds the dashboard open in headless Chromium for SECONDS, so that
// bench/dashboard/run can measure the page's CPU (the browser's process
// tree). Prints the page's sequence number at the start and the end.
// Usage: [PAGE_APP_JS=FILE] node page.mjs URL SECONDS   (playwright-core from tests/browser)
import { createRequire } from "node:module";
const require = createRequire(new URL("../../tests/browser/package.json", import.meta.url));
const { chromium } = require("playwright-core");
const [url, seconds] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const page = await (await browser.newContext({ viewport: { width: 1440, height: 1000 } })).newPage();
// PAGE_APP_JS=FILE: the page runs that script instead of the center's own
// (an A/B of two versions of app.js against one center, in one run).
if (process.env.PAGE_APP_JS) {
  await page.route("**/assets/app.js", (r) => r.fulfill({ path: process.env.PAGE_APP_JS, contentType: "text/javascript" }));
}
await page.goto(url);
await page.waitForFunction(() => window.weirDashboard && window.weirDashboard.state.nodes.size > 0, null, { timeout: 30000 });
const s0 = await page.evaluate(() => window.weirDashboard.state.seq);
console.log(JSON.stringify({ event: "page open", seq: s0 }));
await new Promise((r) => setTimeout(r, Number(seconds) * 1000));
const s1 = await page.evaluate(() => ({ seq: window.weirDashboard.state.seq, nodes: window.weirDashboard.state.nodes.size, stats: window.weirDashboard.stats }));
console.log(JSON.stringify({ event: "page done", ...s1 }));
await browser.close();
