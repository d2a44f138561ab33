// Drives /admin in headless Chromium the way an operator would: paste the key, watch the
// gateway come online, disable it, and keep a screenshot.
//
// Env: URL (the server), KEY (an admin client key), DEVICE_ID (a connected gateway),
// SCREENSHOT (where to write the PNG), CHROMIUM (default /usr/bin/chromium),
// NAME (optional: the gateway's name, checked to show as plain text), TIMEOUT_MS (20000),
// TRAFFIC_SENT / TRAFFIC_RECEIVED (optional: after "gateway online", wait until the chart
// counts at least this many messages; the caller makes that traffic meanwhile).
// Prints one JSON line per step; exit 0 done, 1 failed.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const { URL: base, KEY: key, DEVICE_ID: deviceId, SCREENSHOT: screenshot, NAME: name } = process.env;
const timeout = Number(process.env.TIMEOUT_MS || 20000);
if (!base || !key || !deviceId || !screenshot) {
  console.error("URL, KEY, DEVICE_ID and SCREENSHOT are required");
  process.exit(1);
}

const step = (what, extra = {}) => console.log(JSON.stringify({ step: what, ...extra }));

const profile = mkdtempSync(join(tmpdir(), "smsgw-chromium-"));
let context;
let failed = false;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1360, height: 860 },
    deviceScaleFactor: 1,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeout);
  const pageErrors = [];
  page.on("pageerror", (err) => pageErrors.push(String(err)));
  page.on("console", (msg) => { if (msg.type() === "error") pageErrors.push(msg.text()); });

  await page.goto(`${base}/admin`);
  step("loaded", { title: await page.title() });
  await page.fill("#key", key);
  await page.click("#connect");
  await page.waitForSelector("#dashboard:not([hidden])");
  step("connected");

  // The gateway's row, found by its data-device-id (any text, no CSS escaping), has `field` = `value`.
  const rowShows = (field, value) => page.waitForFunction(([id, f, v]) => {
    const row = [...document.querySelectorAll("#gateways tbody tr")].find((r) => r.dataset.deviceId === id);
    return Boolean(row) && row.dataset[f] === v;
  }, [deviceId, field, value]);

  await rowShows("status", "online");
  step("gateway online", { device_id: deviceId });

  const sent = Number(process.env.TRAFFIC_SENT || 0), received = Number(process.env.TRAFFIC_RECEIVED || 0);
  if (sent || received) {
    await page.waitForFunction(([s, r]) => {
      const chart = document.getElementById("chart");
      return Number(chart.dataset.sent || 0) >= s && Number(chart.dataset.received || 0) >= r;
    }, [sent, received]);
    step("chart shows traffic", { sent, received });
  }

  if (name) {
    const shown = await page.evaluate((id) => {
      const row = [...document.querySelectorAll("#gateways tbody tr")].find((r) => r.dataset.deviceId === id);
      return { text: row.querySelector(".name").textContent, elements: row.querySelector(".name").children.length };
    }, deviceId);
    if (shown.text !== name || shown.elements !== 0) throw new Error(`name not shown as text: ${JSON.stringify(shown)}`);
    step("name shown as text");
  }

  const priority = await page.evaluateHandle((id) => {
    const row = [...document.querySelectorAll("#gateways tbody tr")].find((r) => r.dataset.deviceId === id);
    return row.querySelector(".priority input");
  }, deviceId);
  await priority.asElement().fill("5");
  await priority.asElement().press("Enter");
  await rowShows("priority", "5");
  step("priority changed", { priority: 5 });

  const toggle = await page.evaluateHandle((id) => {
    const row = [...document.querySelectorAll("#gateways tbody tr")].find((r) => r.dataset.deviceId === id);
    return row.querySelector("button.toggle");
  }, deviceId);
  await toggle.asElement().click();
  await rowShows("active", "false");
  step("gateway inactive", { device_id: deviceId });

  // The picture shows the traffic in the counters as well as in the chart.
  await page.waitForFunction((s) => Number(document.getElementById("s-sent").textContent) >= s, sent);
  await page.waitForTimeout(300);
  await page.screenshot({ path: screenshot, fullPage: true });
  step("screenshot", { path: screenshot, sent_today: await page.textContent("#s-sent") });
  if (pageErrors.length) throw new Error(`page errors: ${pageErrors.join(" | ")}`);
} catch (err) {
  failed = true;
  console.error(String(err && err.stack ? err.stack : err));
} finally {
  if (context) await context.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
