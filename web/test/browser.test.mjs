// The web page in headless Chromium, twice, as two users against the real server: register,
// open a chat by handle, send, delivered and read ticks, typing, presence, a group with a
// third user on courier-cli over TCP, reload resumes.
//
// The server runs as a person would run it: `--listen-ws` (every binary WebSocket message
// carries bytes of the Courier stream, as on TCP) and `--web-root` (the same port serves the
// page to a plain GET), so the page's default server is the address it was loaded from.
//
// Needs COURIER_BIN (the built server), Chromium (CHROMIUM, default /usr/bin/chromium) and
// web/dist (npm run build:web in sdk/js); `make test-web` provides all three. Screenshots go
// to web/test-artifacts/ (not committed).

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const WEB = fileURLToPath(new URL("..", import.meta.url));
const ARTIFACTS = join(WEB, "test-artifacts");
const BIN = process.env.COURIER_BIN;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const CLI = process.env.COURIER_CLI ?? (BIN === undefined ? "" : join(dirname(BIN), "courier-cli"));
const missing = [
  [BIN !== undefined && existsSync(BIN), "COURIER_BIN (the built courier binary)"],
  [existsSync(CLI), "courier-cli beside COURIER_BIN (or COURIER_CLI)"],
  [existsSync(CHROMIUM), `Chromium at ${CHROMIUM} (apt-get install chromium)`],
  [existsSync(join(WEB, "dist/web/src/app.js")), "web/dist (npm run build:web in sdk/js)"],
].filter(([ok]) => !ok).map(([, what]) => what);
const skip = missing.length > 0 ? `needs ${missing.join(", ")}; make test-web provides them` : false;

let server, dataDir, browser;
let tcpPort = 0;
let pageUrl = "";

async function startServer() {
  dataDir = mkdtempSync(join(tmpdir(), "courier-web-it-"));
  // Encrypted, as a person runs it: the page trusts the server's key on first use and keeps
  // it (sdk/js's Noise transport inside WebSocket binary messages); courier-cli likewise.
  const args = [
    "serve", "--listen", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0", "--web-root", WEB,
    "--shards", "2", "--argon2-m-kib", "64", "--data-dir", dataDir,
  ];
  server = spawn(BIN, args, { stdio: ["ignore", "pipe", "ignore"] });
  const addrs = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("courier did not start within 20 s")), 20_000);
    let tcp;
    createInterface({ input: server.stdout }).on("line", (line) => {
      const m = /^courier listening on (ws:\/\/)?(\S+)/.exec(line);
      if (!m) return;
      if (!m[1]) tcp = m[2];
      else {
        clearTimeout(timer);
        resolve({ tcp, ws: m[2] });
      }
    });
    server.on("exit", (code) => reject(new Error(`courier exited with ${code}`)));
  });
  tcpPort = Number(addrs.tcp.split(":").at(-1));
  return addrs.ws;
}

before(async () => {
  if (skip) return;
  const ws = await startServer();
  // The page's default server is the WebSocket port it came from.
  pageUrl = `http://${ws}/`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  mkdirSync(ARTIFACTS, { recursive: true });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** Runs courier-cli with its own config file against the server; returns its stdout. */
function cli(args) {
  const out = spawnSync(CLI, ["--server", `127.0.0.1:${tcpPort}`, "--trust-on-first-use", "--json", ...args], {
    encoding: "utf8",
    env: { ...process.env, COURIER_CONFIG: join(dataDir, "cli.toml"), COURIER_PASSWORD: "password1" },
  });
  assert.equal(out.status, 0, `courier-cli ${args.join(" ")}: ${out.stderr}`);
  return out.stdout;
}

async function person(handle) {
  const context = await browser.newContext({ viewport: { width: 900, height: 600 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(pageUrl);
  await page.fill("#handle", handle);
  await page.fill("#password", "password1");
  await page.click("#register-btn");
  await page.waitForSelector("#chat:not([hidden])");
  assert.equal(await page.textContent("#me"), handle);
  return { context, page, errors };
}

test("two people chat in the browser with delivered and read ticks, typing and presence", { skip, timeout: 60_000 }, async () => {
  const tag = `${process.pid % 10000}`;
  const alice = await person(`alice${tag}`);
  const bob = await person(`bob${tag}`);

  // Bob starts a chat with Alice by handle and writes.
  await bob.page.fill("#new-chat-handle", `alice${tag}`);
  await bob.page.press("#new-chat-handle", "Enter");
  await bob.page.waitForFunction((h) => document.querySelector("#thread-title")?.textContent === h, `alice${tag}`);
  await bob.page.type("#composer", "hi alice");
  await bob.page.press("#composer", "Enter");

  // Alice's thread list gains the chat, unread; her client confirms delivery meanwhile.
  const row = alice.page.locator("#threads li", { hasText: `bob${tag}` });
  await row.locator(".unread", { hasText: "1" }).waitFor();
  await bob.page.locator("#messages li.mine[data-tick=delivered]").waitFor();
  await bob.page.screenshot({ path: join(ARTIFACTS, "bob-delivered.png") });

  // Alice opens it: the message is there and Bob's tick turns read.
  await row.click();
  await alice.page.locator("#messages li", { hasText: "hi alice" }).waitFor();
  await bob.page.locator("#messages li.mine[data-tick=read]").waitFor();
  assert.equal(await bob.page.locator("#messages li.mine .tick.read").count(), 1);
  assert.match(await bob.page.textContent("#messages li.mine .time"), /\d/, "the time of a sent message is shown");

  // Typing shows on the other side; the reply arrives and Bob's page marks it read.
  await alice.page.type("#composer", "hello b");
  await bob.page.waitForFunction((h) => document.querySelector("#typing")?.textContent === `${h} is typing…`, `alice${tag}`);
  await alice.page.type("#composer", "ob");
  await alice.page.press("#composer", "Enter");
  await bob.page.locator("#messages li:not(.mine)", { hasText: "hello bob" }).waitFor();
  await alice.page.locator("#messages li.mine[data-tick=read]").waitFor();
  await bob.page.waitForFunction(() => document.querySelector("#typing")?.textContent === "");

  // Bob replies to Alice's message and reacts to it: Alice sees the quote and the count.
  const hers = bob.page.locator("#messages li:not(.mine)", { hasText: "hello bob" });
  await hers.locator(".reply-btn").click();
  await bob.page.waitForFunction(() => document.querySelector("#replying-text")?.textContent === "↪ hello bob");
  await bob.page.type("#composer", "a reply");
  await bob.page.press("#composer", "Enter");
  await hers.locator(".react-btn").click();
  const reply = alice.page.locator("#messages li:not(.mine)", { hasText: "a reply" });
  await reply.locator(".reply", { hasText: "↪ hello bob" }).waitFor();
  const mineOnAlice = alice.page.locator("#messages li.mine", { hasText: "hello bob" });
  await mineOnAlice.locator(".reaction", { hasText: "👍 1" }).waitFor();
  await hers.locator(".reaction.mine", { hasText: "👍 1" }).waitFor();
  assert.equal(await bob.page.locator("#replying").isHidden(), true, "the reply bar closes after sending");

  // Presence: Bob sees Alice online in his list and in the thread header.
  await bob.page.waitForFunction(() => document.querySelector("#thread-status")?.textContent === "online");
  await alice.page.screenshot({ path: join(ARTIFACTS, "alice.png") });
  await bob.page.screenshot({ path: join(ARTIFACTS, "bob.png") });

  // Carol, on courier-cli over TCP, makes a group of the three and writes; Alice answers from
  // the page; Bob reads both; Carol's history has Alice's answer.
  const carol = `carol${tag}`;
  const created = cli(["register", carol]) && cli(["group", "create", "trio", "--members", `alice${tag},bob${tag}`]);
  const group = /"id":(\d+)/.exec(created)[1];
  const carolMsg = /"message":(\d+)/.exec(cli(["send", "--thread", group, "hello", "from", "the", "terminal"]))[1];
  const aliceGroup = alice.page.locator("#threads li", { hasText: "trio" });
  await aliceGroup.locator(".unread").waitFor();
  await aliceGroup.click();
  const fromCarol = alice.page.locator("#messages li", { hasText: "hello from the terminal" });
  await fromCarol.waitFor();
  assert.equal(await fromCarol.locator(".from").textContent(), carol);
  // Carol edits it from the terminal: the page shows the new text, marked "(edited)".
  cli(["edit", "--thread", group, "--message", carolMsg, "hello", "from", "the", "shell"]);
  const edited = alice.page.locator("#messages li", { hasText: "hello from the shell" });
  await edited.locator(".edited", { hasText: "(edited)" }).waitFor();
  await alice.page.type("#composer", "hi carol");
  await alice.page.press("#composer", "Enter");
  await alice.page.locator("#messages li.mine[data-tick]", { hasText: "hi carol" }).waitFor();
  await bob.page.locator("#threads li", { hasText: "trio" }).click();
  await bob.page.locator("#messages li", { hasText: "hi carol" }).waitFor();
  // Bob opens the group after the edit: history meta marks it edited.
  await bob.page.locator("#messages li", { hasText: "hello from the shell" }).locator(".edited", { hasText: "(edited)" }).waitFor();
  const history = JSON.parse(cli(["history", "--thread", group]));
  assert.ok(history.some((m) => m.text === "hi carol" && m.sender_handle === `alice${tag}`), JSON.stringify(history));
  await alice.page.screenshot({ path: join(ARTIFACTS, "alice-group.png") });

  // A reload resumes with the token kept in localStorage: no password asked.
  await alice.page.reload();
  await alice.page.waitForSelector("#chat:not([hidden])");
  await alice.page.locator("#threads li", { hasText: `bob${tag}` }).waitFor();

  // Alice leaves: Bob's header in their direct chat says so.
  await bob.page.locator("#threads li", { hasText: `alice${tag}` }).click();
  await bob.page.waitForFunction(() => document.querySelector("#thread-status")?.textContent === "online");
  await alice.context.close();
  await bob.page.waitForFunction(() => document.querySelector("#thread-status")?.textContent === "offline", null, { timeout: 15_000 });
  assert.deepEqual(bob.errors, []);
  assert.deepEqual(alice.errors, []);
  await bob.context.close();
});
