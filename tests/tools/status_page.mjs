// Drives the admin status page in headless Chromium (playwright-core with the system browser)
// for tests/status_page.rs, and prints what it saw as one JSON object.
//
// Usage: node status_page.mjs PAGE_URL GOOD_TOKEN BACKEND_KEY SCREENSHOT.png
//   BACKEND_KEY is "upstream/addr" of the backend to drain with the page's button.
import { chromium } from "playwright-core";
import { existsSync } from "node:fs";

const [url, token, backend, screenshot] = process.argv.slice(2);
const executablePath = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
  .find((p) => existsSync(p));
if (!executablePath) throw new Error("Chromium is not installed (scripts/install-deps.sh installs it)");

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const out = { console_errors: [] };  // CSP violations are console errors too
try {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") out.console_errors.push(m.text()); });
  page.on("pageerror", (e) => out.console_errors.push(String(e)));
  const row = `[data-backend="${backend}"]`;
  const visible = (sel) => page.locator(sel).isVisible();

  // 1. No token: only what /health and /ready show.
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById("ready").textContent !== "…");
  out.no_token = {
    ready: await page.textContent("#ready"),
    health: await page.textContent("#health"),
    admin_visible: await visible("#admin"),
    reduced_note_visible: await visible("#reduced"),
  };

  // 2. A wrong token: refused, still the reduced view.
  await page.fill("#token", "wrong-token");
  await page.click("#token-use");
  await page.waitForFunction(() => document.getElementById("message").textContent !== "");
  out.wrong_token = {
    message: await page.textContent("#message"),
    admin_visible: await visible("#admin"),
    health: await page.textContent("#health"),
  };

  // 3. The right token: the whole view.
  await page.fill("#token", token);
  await page.click("#token-use");
  await page.waitForSelector(row, { state: "visible" });
  const field = (f) => page.textContent(`${row} [data-field="${f}"]`);
  out.with_token = {
    message: await page.textContent("#message"),
    stored_token: await page.evaluate(() => sessionStorage.getItem("gatehouse-admin-token")),
    backends: await page.$$eval("[data-backend]", (rows) => rows.map((r) => ({
      key: r.getAttribute("data-backend"),
      health: r.querySelector('[data-field="health"]').textContent,
      circuit: r.querySelector('[data-field="circuit"]').textContent,
      inflight: r.querySelector('[data-field="inflight"]').textContent,
      drained: r.querySelector('[data-field="drained"]').textContent,
    }))),
    routes: await page.$$eval("#routes tbody tr", (rows) => rows.map((r) =>
      Array.from(r.cells).map((c) => c.textContent))),
    tiers: await page.$$eval("#tiers tbody tr", (rows) => rows.map((r) =>
      Array.from(r.cells).map((c) => c.textContent))),
    generation: await page.textContent("#generation"),
    last_reload: await page.textContent("#last-reload"),
    reload_errors: await page.$$eval("#config ul.errors li", (li) => li.map((l) => l.textContent)),
    // Elements inside rendered values (an error text with markup must stay text).
    injected_elements: await page.$$eval("#config ul.errors li *", (e) => e.length),
    process: await page.textContent("#process"),
  };
  await page.screenshot({ path: screenshot, fullPage: true });

  // 4. Drain with the button: the page shows it once the gateway has it.
  const before = await field("drained");
  await page.click(`${row} button[data-action="drain"]`);
  await page.waitForFunction((sel) =>
    document.querySelector(sel + ' [data-field="drained"]')?.textContent === "drained", row);
  out.drain = {
    before,
    after: await field("drained"),
    button: await page.textContent(`${row} button`),
  };

  // 5. A narrow screen: nothing wider than the viewport but the tables' own scroll boxes.
  await page.setViewportSize({ width: 360, height: 740 });
  await page.waitForTimeout(100);
  out.narrow = await page.evaluate(() => ({
    page_width: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
  }));
  await page.screenshot({ path: screenshot.replace(/\.png$/, "-narrow.png"), fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
