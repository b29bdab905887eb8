// Drives the wsgate demo page in Debian's headless Chromium and uses every
// panel: increment (advance, then Reset), echo, broadcast chat between two
// browser contexts, pub/sub subscribe and publish, the live status fed from
// the `stats` topic, and the endpoints panel's commands; every socket must
// have negotiated permessage-deflate (the socket's `extensions`, and the
// server's counters in /metrics). Then the same page
// served where no gateway listens must say "server unreachable, retrying in
// N s" on every panel without changing their header heights. Ends with
// full-page screenshots (SCREENSHOT, and SCREENSHOT with -unreachable before
// .png for the second state).
//
//   node tests/browser/demo.mjs http://127.0.0.1:PORT/ target/demo-screenshot.png
//
// An https:// URL is the same page over TLS (wss:// panels); with
// IGNORE_HTTPS_ERRORS=1 the browser contexts accept the test certificate
// (and NODE_EXTRA_CA_CERTS lets this script's own fetches trust its CA).
//
// Exits 0 when every check passed, 1 with the failed step and what the page
// showed otherwise, 2 on usage errors. Every wait is bounded (STEP_MS per
// step, TOTAL_MS for the whole run). tests/browser.rs runs this against the
// wsgate binary.

import { mkdir } from "node:fs/promises";
import { createServer } from "node:net";
import { dirname } from "node:path";

import { chromium } from "playwright-core";

const STEP_MS = 15_000;
const TOTAL_MS = 120_000;
// Debian's package; Playwright's own browser download is not used.
const CHROMIUM = "/usr/bin/chromium";
// The flags this machine needs: no sandbox as root, no GPU, and none of
// Chromium's own network traffic (the closed network refuses it, and its
// retries slow every start). The fresh --user-data-dir is Playwright's:
// launch() gives each browser an empty temporary profile (and refuses a
// --user-data-dir in args).
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const PANELS = ["inc", "echo", "chat", "ps", "status"];
// For the https variant: the test's certificate is not one Chromium trusts.
const CONTEXT = {
  viewport: { width: 1280, height: 900 },
  ignoreHTTPSErrors: process.env.IGNORE_HTTPS_ERRORS === "1",
};

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node demo.mjs URL SCREENSHOT.png");
  process.exit(2);
}

// The last resort if something hangs outside a bounded wait (a browser that
// will not close, say).
setTimeout(() => {
  console.error(`FAIL: the whole run took longer than ${TOTAL_MS / 1000} s`);
  process.exit(1);
}, TOTAL_MS).unref();

const pageErrors = [];
let browser;

try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    timeout: STEP_MS,
  });
  const a = await openDemo("A");
  const b = await openDemo("B");

  await step("increment counter advances", async () => {
    const shows = () => `the counter shows ${document.getElementById("inc-value").textContent}`;
    await waitFor(a, () => /^\d+$/.test(document.getElementById("inc-value").textContent), null, shows);
    const first = await a.evaluate(() => Number(document.getElementById("inc-value").textContent));
    await waitFor(a, (v) => Number(document.getElementById("inc-value").textContent) > v, first, shows);
    // Let it reach a value that a reset visibly undoes.
    await waitFor(a, () => Number(document.getElementById("inc-value").textContent) >= 3, null, shows);
  });

  await step("Reset brings the counter back near 0", async () => {
    // Record every value shown from now on, so that a fast counter cannot
    // step past 0 between two polls.
    const before = await a.evaluate(() => {
      const el = document.getElementById("inc-value");
      window.__incSeen = [];
      new MutationObserver((records) => {
        for (const r of records) for (const n of r.addedNodes) window.__incSeen.push(Number(n.textContent));
      }).observe(el, { childList: true, characterData: true, subtree: true });
      return Number(el.textContent);
    });
    await a.click("#inc-reset");
    await waitFor(
      a,
      (v) => window.__incSeen.some((n) => n <= 2 && n < v),
      before,
      () => `after Reset the counter showed ${window.__incSeen.slice(0, 20).join(", ") || "nothing new"}`,
    );
    const seen = await a.evaluate(() => window.__incSeen.slice(0, 10));
    console.log(`  counter was ${before}, then showed ${seen.join(", ")}`);
  });

  await step("echo returns what was sent", async () => {
    const text = `echo ${Date.now()}`;
    await a.fill("#echo-input", text);
    await a.click("#echo-send");
    await waitForLog(a, "#echo-log", "in", [text]);
  });

  await step("broadcast chat reaches the other browser", async () => {
    const text = `hello from A ${Date.now()}`;
    await a.fill("#chat-input", text);
    await a.click("#chat-send");
    await waitForLog(b, "#chat-log", "in", [text]);
    await waitForLog(a, "#chat-log", "out", [text]);
    // Send one back, so that the screenshot shows both directions.
    await b.fill("#chat-input", "hi A, B here");
    await b.click("#chat-send");
    await waitForLog(a, "#chat-log", "in", ["hi A, B here"]);
  });

  await step("pub/sub subscribe and publish", async () => {
    const topic = "demo.test";
    for (const p of [a, b]) {
      await p.fill("#ps-topic", topic);
      await p.click("#ps-sub");
      await waitForLog(p, "#ps-log", "info", ["subscribed", topic]);
    }
    await a.fill("#ps-data", '{"n":42,"from":"A"}');
    await a.click("#ps-pub");
    await waitForLog(b, "#ps-log", "in", [topic, '"n":42']);
    await waitForLog(a, "#ps-log", "in", [topic, '"n":42']);
  });

  await step("live status shows sessions and messages/s", async () => {
    await waitFor(a, () => {
      const sessions = Number(document.getElementById("status-sessions").textContent.replace(/,/g, ""));
      const rate = Number.parseFloat(document.getElementById("status-rate").textContent);
      return sessions >= 1 && Number.isFinite(rate);
    }, null, () => {
      const text = (id) => document.getElementById(id).textContent;
      return `sessions "${text("status-sessions")}", messages/s "${text("status-rate")}"; ${text("status-note")}`;
    });
    const shown = await a.evaluate(() => ({
      sessions: document.getElementById("status-sessions").textContent,
      rate: document.getElementById("status-rate").textContent,
    }));
    console.log(`  sessions ${shown.sessions}, messages/s ${shown.rate}`);
  });

  await step("endpoints panel: commands for this host", async () => {
    const { host, protocol } = new URL(url);
    const ws = protocol === "https:" ? "wss:" : "ws:";
    const commands = await a.$$eval("#try code", (codes) => codes.map((c) => c.textContent));
    for (const want of [`curl ${protocol}//${host}/healthz`, `websocat ${ws}//${host}/echo`]) {
      if (!commands.includes(want)) throw new Error(`no ${JSON.stringify(want)} in ${JSON.stringify(commands)}`);
    }
    if (commands.some((c) => c.includes("HOST"))) throw new Error(`HOST left in ${JSON.stringify(commands)}`);
    const res = await fetch(new URL("/healthz", url));
    if ((await res.text()).trim() !== "ok") throw new Error("the healthz command's URL does not answer ok");
  });

  await step("server unreachable: every panel says so, on one line", async () => {
    // The same page, served by the test from an address where nothing
    // listens: its sockets are refused, as when the gateway is down.
    const html = await (await fetch(url)).text();
    const dead = `http://127.0.0.1:${await closedPort()}/`;
    const context = await browser.newContext(CONTEXT);
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on("pageerror", (e) => pageErrors.push(`unreachable page: ${e.message}`));
    await page.route(dead, (route) => route.fulfill({ status: 200, contentType: "text/html", body: html }));
    await page.goto(dead, { timeout: STEP_MS });
    await waitFor(
      page,
      (ids) =>
        ids.every((id) => {
          const panel = document.getElementById(id);
          return (
            panel.dataset.state === "unreachable" &&
            /^server unreachable, retrying in \d+ s$/.test(panel.querySelector(".conn").textContent)
          );
        }),
      PANELS,
      () => PANELS.map((id) => `${id}: ${document.querySelector(`#${id} .conn`).textContent}`).join("; "),
    );
    const layout = (p) =>
      p.evaluate((ids) =>
        ids.map((id) => {
          const badge = document.querySelector(`#${id} .conn`);
          const style = getComputedStyle(badge);
          return {
            id,
            header: document.querySelector(`#${id} > header`).getBoundingClientRect().height,
            badge: badge.getBoundingClientRect().height,
            line: Number.parseFloat(style.lineHeight) || 1.45 * Number.parseFloat(style.fontSize),
            nowrap: style.whiteSpace === "nowrap",
          };
        }), PANELS);
    const [open, down] = [await layout(a), await layout(page)];
    for (const [i, d] of down.entries()) {
      if (!d.nowrap || d.badge > 1.5 * d.line) throw new Error(`${d.id}: the badge wraps (${JSON.stringify(d)})`);
      if (Math.abs(d.header - open[i].header) > 0.5) {
        throw new Error(`${d.id}: header ${open[i].header}px open, ${d.header}px unreachable`);
      }
    }
    const shot = screenshot.replace(/\.png$/, "") + "-unreachable.png";
    await mkdir(dirname(shot), { recursive: true });
    await page.screenshot({ path: shot, fullPage: true, timeout: STEP_MS });
    console.log(`  ${await page.textContent("#inc .conn")}; screenshot ${shot}`);
    await context.close();
  });

  await step("every socket negotiated permessage-deflate", async () => {
    // Chromium offers "permessage-deflate; client_max_window_bits" on every
    // handshake; the built-in configuration compresses in shared mode. A
    // socket's `extensions` is what the 101 agreed to.
    const agreed = await a.evaluate(
      (path) =>
        new Promise((resolve, reject) => {
          const ws = new WebSocket(new URL(path, location.href.replace(/^http/, "ws")));
          ws.onopen = () => {
            resolve(ws.extensions);
            ws.close();
          };
          ws.onerror = () => reject(new Error("the socket failed"));
        }),
      "/echo",
    );
    if (!agreed.startsWith("permessage-deflate")) throw new Error(`extensions: ${JSON.stringify(agreed)}`);
    // Every panel's socket of both pages was compressed too: the server
    // counted them, and compressed traffic both ways.
    const opened = 2 * PANELS.length + 1;
    // The server counted them and compressed traffic both ways.
    const metrics = await (await fetch(new URL("/metrics", url))).text();
    const value = (line) => Number(metrics.match(new RegExp(`^${line} (\\d+)$`, "m"))?.[1] ?? 0);
    const sessions = value('wsgate_compression_sessions_total\\{vhost="default"\\}');
    const sent = value('wsgate_compressed_bytes_total\\{vhost="default",direction="out"\\}');
    const before = value('wsgate_uncompressed_bytes_total\\{vhost="default",direction="out"\\}');
    const received = value('wsgate_compressed_bytes_total\\{vhost="default",direction="in"\\}');
    if (sessions < opened || sent === 0 || received === 0 || before <= sent) {
      throw new Error(`metrics: sessions ${sessions} (of ${opened}), out ${sent}/${before} B, in ${received} B`);
    }
    console.log(`  ${agreed}; ${sessions} sessions; out ${before} B -> ${sent} B; in ${received} B`);
  });

  await step("no script errors", async () => {
    if (pageErrors.length) throw new Error(pageErrors.join("\n"));
  });

  await step(`full-page screenshot to ${screenshot}`, async () => {
    await mkdir(dirname(screenshot), { recursive: true });
    await a.screenshot({ path: screenshot, fullPage: true, timeout: STEP_MS });
  });

  console.log("PASS: every demo panel works in headless Chromium");
} catch (e) {
  console.error(`FAIL: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser?.close().catch(() => {});
}

// Opens the demo in a browser context of its own (separate cookies and
// sockets, as a second visitor would have) and waits until every panel's
// socket is open.
async function openDemo(name) {
  return step(`page ${name}: load ${url} and see every panel open`, async () => {
    const context = await browser.newContext(CONTEXT);
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on("pageerror", (e) => pageErrors.push(`page ${name}: ${e.message}`));
    page.on("console", (m) => {
      if (m.type() === "error") console.log(`  [page ${name} console] ${m.text()}`);
    });
    const response = await page.goto(url, { timeout: STEP_MS });
    if (!response || response.status() !== 200) {
      throw new Error(`GET ${url} answered ${response?.status()}`);
    }
    const type = response.headers()["content-type"] ?? "";
    if (!type.startsWith("text/html")) throw new Error(`content-type ${type}`);
    await waitFor(
      page,
      (ids) => ids.every((id) => document.getElementById(id)?.dataset.state === "open"),
      PANELS,
      () =>
        "panel states: " +
        [...document.querySelectorAll("section[data-state]")]
          .map((s) => `${s.id} ${s.querySelector(".conn").textContent}`)
          .join("; "),
    );
    return page;
  });
}

// A port on 127.0.0.1 where nothing listens: bound, then closed.
function closedPort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function step(name, body) {
  const started = Date.now();
  try {
    const result = await body();
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
    return result;
  } catch (e) {
    throw new Error(`${name}: ${e.message.split("\n=====")[0]}`);
  }
}

// Waits up to STEP_MS for `predicate(arg)` to hold in the page; on timeout,
// the error carries what `shows()`, run in the page, says about it.
async function waitFor(page, predicate, arg = null, shows = null) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: STEP_MS, polling: 50 });
  } catch (e) {
    const seen = shows ? await page.evaluate(shows).catch((err) => `(${err.message})`) : "";
    throw new Error(`${e.message.split("\n")[0]}${seen ? ` (${seen})` : ""}`);
  }
}

// Waits for a log line of direction `dir` that contains every one of `parts`;
// on timeout, the error says what the log held.
async function waitForLog(page, list, dir, parts) {
  try {
    await waitFor(
      page,
      ([list, dir, parts]) =>
        [...document.querySelectorAll(`${list} li[data-dir="${dir}"]`)].some((li) =>
          parts.every((p) => li.textContent.includes(p)),
        ),
      [list, dir, parts],
    );
  } catch (e) {
    const lines = await page.$$eval(`${list} li`, (lis) => lis.map((li) => `[${li.dataset.dir}] ${li.textContent}`));
    throw new Error(
      `no ${dir} line with ${JSON.stringify(parts)} in ${list} (${e.message}); it holds:\n    ${lines.join("\n    ") || "(nothing)"}`,
    );
  }
}
