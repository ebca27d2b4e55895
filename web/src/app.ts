/**
 * The Courier web chat: log in, the thread list, a thread with ticks, presence and typing,
 * replies ("↪"), reactions and "(edited)".
 * Plain DOM, built on the TypeScript client library (sdk/js) over WebSocket, encrypted with
 * the Noise transport unless the page is opened with `plaintext=1`.
 */

import {
  applyReceipt,
  applySent,
  Client,
  ClientError,
  decodeSystemEvent,
  Direction,
  ErrorCode,
  MessageKind,
  newClientMsgId,
  ReceiptKind,
  SystemEventKind,
  ThreadKind,
  Tick,
  tick,
  tickSymbol,
  type Message,
  type MessageMeta,
  type Thread,
  type ThreadSummary,
} from "../../sdk/js/src/index.js";

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const utf8 = new TextDecoder();
const SERVER_KEY = "courier.server";
/** The server keys pinned so far, by server URL (a JSON object), as courier-cli keeps them. */
const PINS_KEY = "courier.serverKeys";
/** Sends "typing" at most this often while keys are pressed, and "stopped" after this idle. */
const TYPING_EVERY_MS = 3000;
const TYPING_IDLE_MS = 4000;
/** A typing indicator without news for this long is dropped (the sender may have gone). */
const TYPING_SHOWN_MS = 6000;
/** The one reaction the page offers (any other shows, and can be matched, too). */
const QUICK_REACTION = "👍";
/** Characters of the replied-to message quoted above a reply. */
const QUOTE_CHARS = 60;

let client: Client | undefined;
const handles = new Map<bigint, string>();
const online = new Map<bigint, boolean>();
let threads: ThreadSummary[] = [];

interface Open {
  thread: Thread;
  /** The message elements by id; pending sends are keyed by their client id until SENT. */
  items: Map<bigint, Item>;
  typers: Map<bigint, number>;
  /** The message the composer replies to, if any. */
  replyTo: bigint;
}
interface Item {
  li: HTMLLIElement;
  message: Message;
  /** Reply, edit and reactions (from history meta, pushes and EDITED/REACTED). */
  meta: MessageMeta;
}
let open: Open | undefined;
let typingSentAt = 0;
let typingIdle: number | undefined;

function me(): bigint {
  return client?.userId ?? 0n;
}

function defaultServer(): string {
  const param = new URLSearchParams(location.search).get("server");
  if (param) return param;
  const saved = localStorage.getItem(SERVER_KEY);
  if (saved) return saved;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // Served by `courier serve --web-root` on a --listen-ws port: the same address speaks
  // WebSocket. Opened from a file: the server's usual WebSocket port on this machine.
  if (location.protocol.startsWith("http") && location.host) return `${scheme}://${location.host}/`;
  return `${scheme}://${location.hostname || "127.0.0.1"}:7880/`;
}

function pins(): Record<string, string> {
  try {
    return JSON.parse(localStorage.getItem(PINS_KEY) ?? "{}") as Record<string, string>;
  } catch {
    return {};
  }
}

/** The key to pin for `server`: `?key=HEX`, else the one kept from an earlier visit. */
function pinnedKey(server: string): string {
  return new URLSearchParams(location.search).get("key") ?? pins()[server] ?? "";
}

/** `?plaintext=1`: no encryption, for a server run with --insecure-plaintext (benchmarks, tests). */
function plaintext(): boolean {
  return new URLSearchParams(location.search).get("plaintext") === "1";
}

function say(where: string, e: unknown): void {
  $(where).textContent = e instanceof Error ? e.message : String(e);
}

function showLogin(message = ""): void {
  $("chat").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $<HTMLInputElement>("server").value = defaultServer();
  $<HTMLInputElement>("server-key").value = pinnedKey(defaultServer());
}

/**
 * Encrypted (Noise) unless the page says `plaintext=1`: IK with the key given, else trust on
 * first use, and the key the server proved is kept and pinned from then on.
 */
async function connect(server: string, key = pinnedKey(server)): Promise<Client> {
  client?.close();
  const c = await Client.connect(server, {
    autoReconnect: true,
    device: "web",
    clientName: "courier-web/0.1.0",
    ...(plaintext() ? { insecurePlaintext: true } : key !== "" ? { serverKey: key } : { trustOnFirstUse: true }),
  });
  localStorage.setItem(SERVER_KEY, server);
  if (c.serverKey !== undefined) localStorage.setItem(PINS_KEY, JSON.stringify({ ...pins(), [server]: c.serverKey }));
  client = c;
  c.on("message", onMessage);
  c.on("messageMeta", ({ thread, meta }) => {
    const item = open?.thread.id === thread ? open.items.get(meta.id) : undefined;
    if (item === undefined) return;
    item.meta = meta;
    renderExtras(item);
  });
  c.on("receipt", (r) => {
    if (open?.thread.id === r.thread && applyReceipt(open.thread.members, r.user, r.kind, r.upTo)) renderTicks();
  });
  c.on("typing", (t) => onTyping(t.thread, t.user, t.active));
  c.on("presence", (p) => {
    online.set(p.user, p.online);
    renderThreads();
    renderStatus();
  });
  c.on("threadUpdated", (t) => {
    if (open?.thread.id === t.id) {
      open.thread = t;
      renderTicks();
    }
  });
  c.on("disconnected", () => ($("conn-state").textContent = "reconnecting…"));
  c.on("reconnected", () => {
    $("conn-state").textContent = "";
    void loadThreads();
  });
  c.on("sessionEnded", ({ reason }) => {
    if (client === c) showLogin(reason === undefined ? "" : "You were logged out.");
  });
  return c;
}

async function enter(how: "login" | "register"): Promise<void> {
  const server = $<HTMLInputElement>("server").value.trim();
  const key = $<HTMLInputElement>("server-key").value.trim();
  const handle = $<HTMLInputElement>("handle").value.trim();
  const password = $<HTMLInputElement>("password").value;
  $("login-error").textContent = "";
  try {
    const c = await connect(server, key);
    if (how === "login") await c.login(handle, password);
    else await c.register(handle, password);
    await showChat();
  } catch (e) {
    say("login-error", e);
  }
}

async function showChat(): Promise<void> {
  const c = client!;
  handles.set(c.userId!, c.auth!.handle);
  $("me").textContent = c.auth!.handle;
  $("login").hidden = true;
  $("chat").hidden = false;
  await loadThreads();
}

async function loadThreads(): Promise<void> {
  const c = client!;
  threads = await c.listAllThreads();
  const peers = threads.filter((t) => t.kind === ThreadKind.Direct).map((t) => t.peer);
  await learnHandles(peers);
  renderThreads();
  // Presence is for contacts: everyone the user has a direct chat with becomes one.
  const watched = peers.slice(0, 100);
  if (watched.length > 0) {
    const known = new Set((await c.contacts()).map((u) => u.id));
    for (const p of watched) if (!known.has(p)) await c.contactAdd(p).catch(() => {});
    await c.presenceSubscribe(watched).catch(() => {});
    for (const p of await c.presenceQuery(watched).catch(() => [])) online.set(p.user, p.online);
    renderThreads();
  }
  if (open !== undefined) await openThread(open.thread.id);
}

async function learnHandles(ids: bigint[]): Promise<void> {
  const unknown = [...new Set(ids)].filter((id) => id !== 0n && !handles.has(id));
  if (unknown.length === 0) return;
  for (const u of await client!.users(unknown)) handles.set(u.id, u.handle);
}

function threadName(t: { kind: number; name: string; label: string; peer?: bigint; members?: Thread["members"] }): string {
  if (t.label) return t.label;
  if (t.kind === ThreadKind.Group) return t.name || "group";
  const peer = t.peer ?? t.members?.find((m) => m.user !== me())?.user ?? 0n;
  return handles.get(peer) ?? `user ${peer}`;
}

function renderThreads(): void {
  const ul = $("threads");
  ul.replaceChildren(
    ...threads.map((t) => {
      const li = document.createElement("li");
      li.dataset.thread = String(t.id);
      if (open?.thread.id === t.id) li.classList.add("active");
      if (t.kind === ThreadKind.Direct) {
        const dot = document.createElement("span");
        dot.className = online.get(t.peer) ? "dot online" : "dot";
        li.append(dot);
      }
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = threadName(t);
      li.append(name);
      if (t.unread > 0 && open?.thread.id !== t.id) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(t.unread);
        li.append(badge);
      }
      li.onclick = () => void openThread(t.id).catch((e) => say("new-chat-error", e));
      return li;
    }),
  );
}

function renderStatus(): void {
  const status = $("thread-status");
  if (open === undefined) return void (status.textContent = "");
  const t = open.thread;
  if (t.kind === ThreadKind.Group) {
    status.textContent = `${t.members.length} members`;
  } else {
    const peer = t.members.find((m) => m.user !== me())?.user ?? 0n;
    status.textContent = online.get(peer) ? "online" : "offline";
  }
}

async function openThread(id: bigint): Promise<void> {
  const c = client!;
  const thread = await c.getThread(id);
  await learnHandles(thread.members.map((m) => m.user));
  const page = await c.history(id, 0n, Direction.Backward, 50);
  open = { thread, items: new Map(), typers: new Map(), replyTo: 0n };
  $("messages").replaceChildren();
  setReplyTo(0n);
  for (const m of page.messages.reverse()) {
    // EDITED and REACTED are already in the meta of the message they changed.
    if (!isChange(m)) addMessage(m);
  }
  for (const meta of page.meta) {
    const item = open.items.get(meta.id);
    if (item === undefined) continue;
    item.meta = meta;
    renderExtras(item);
  }
  $("thread-title").textContent = threadName(thread);
  $("send-form").hidden = false;
  $("typing").textContent = "";
  renderStatus();
  const summary = threads.find((t) => t.id === id);
  if (summary !== undefined) summary.unread = 0;
  renderThreads();
  markRead();
}

/** Tells the server the newest message from someone else in the open thread was read. */
function markRead(): void {
  if (open === undefined || document.hidden) return;
  let newest = 0n;
  for (const { message } of open.items.values()) {
    if (message.sender !== me() && message.id > newest) newest = message.id;
  }
  const mine = open.thread.members.find((m) => m.user === me());
  if (newest > 0n && (mine === undefined || mine.read < newest)) {
    if (mine !== undefined) mine.read = newest;
    void client!.receipt(open.thread.id, ReceiptKind.Read, newest).catch(() => {});
  }
}

function describeSystem(m: Message): string {
  const ev = decodeSystemEvent(m.body);
  const who = (u: bigint) => handles.get(u) ?? `user ${u}`;
  switch (ev.event) {
    case SystemEventKind.Created:
      return `${who(ev.actor)} created “${ev.text}”`;
    case SystemEventKind.MemberAdded:
      return `${who(ev.actor)} added ${(ev.users.length ? ev.users : [ev.subject]).map(who).join(", ")}`;
    case SystemEventKind.MemberRemoved:
      return `${who(ev.actor)} removed ${who(ev.subject)}`;
    case SystemEventKind.MemberLeft:
      return `${who(ev.subject)} left`;
    case SystemEventKind.Renamed:
      return `${who(ev.actor)} renamed the group to “${ev.text}”`;
    case SystemEventKind.Recalled:
      return `${who(ev.actor)} recalled a message`;
    default:
      return "";
  }
}

/** An EDITED or REACTED system message: shown as a change of its message, not as a line. */
function isChange(m: Message): boolean {
  if (m.kind !== MessageKind.System) return false;
  const event = decodeSystemEvent(m.body).event;
  return event === SystemEventKind.Edited || event === SystemEventKind.Reacted;
}

/** Applies an EDITED or REACTED system message to the message it names, if shown. */
function applyChange(m: Message): void {
  const ev = decodeSystemEvent(m.body);
  const item = open?.thread.id === m.thread ? open.items.get(ev.subject) : undefined;
  if (item === undefined) return;
  if (ev.event === SystemEventKind.Edited) {
    item.message = { ...item.message, body: ev.body };
    item.meta.editedAt = m.id;
    const body = item.li.querySelector(".body");
    if (body !== null) body.textContent = utf8.decode(ev.body);
  } else {
    item.meta.reactions = ev.reactions;
    if (ev.actor === me()) item.meta.mine = ev.text;
  }
  renderExtras(item);
}

function noMeta(id: bigint): MessageMeta {
  return { id, replyTo: 0n, editedAt: 0n, reactions: [], mine: "" };
}

/** The quote of a replied-to message, "(edited)" and the reaction counts of one message. */
function renderExtras(item: Item): void {
  const { li, meta } = item;
  const reply = li.querySelector<HTMLElement>(".reply");
  if (reply !== null) {
    const target = meta.replyTo === 0n ? undefined : open?.items.get(meta.replyTo);
    reply.hidden = meta.replyTo === 0n;
    reply.textContent = meta.replyTo === 0n ? "" : `↪ ${target === undefined ? "an earlier message" : quote(target.message)}`;
  }
  const edited = li.querySelector<HTMLElement>(".edited");
  if (edited !== null) edited.textContent = meta.editedAt === 0n ? "" : "(edited) ";
  const reactions = li.querySelector<HTMLElement>(".reactions");
  if (reactions !== null) {
    reactions.replaceChildren(
      ...meta.reactions.map((r) => {
        const b = document.createElement("button");
        b.type = "button";
        b.className = r.reaction === meta.mine ? "reaction mine" : "reaction";
        b.textContent = `${r.reaction} ${r.count}`;
        b.title = r.reaction === meta.mine ? "remove your reaction" : "react with this";
        b.onclick = () => react(item, r.reaction);
        return b;
      }),
    );
  }
}

function quote(m: Message): string {
  const text = m.recalled ? "(recalled)" : m.kind === MessageKind.Media ? "(media)" : utf8.decode(m.body);
  return text.length > QUOTE_CHARS ? `${text.slice(0, QUOTE_CHARS)}…` : text;
}

/** Sets (or, when it is already the user's, removes) the user's reaction to a message. */
function react(item: Item, reaction: string): void {
  if (open === undefined || client === undefined || item.message.id === 0n) return;
  const next = item.meta.mine === reaction ? "" : reaction;
  void client.react(open.thread.id, item.message.id, next).catch((e) => say("typing", e));
}

/** The composer replies to `id` (0n: to nothing). */
function setReplyTo(id: bigint): void {
  if (open !== undefined) open.replyTo = id;
  const bar = $("replying");
  const target = id === 0n ? undefined : open?.items.get(id);
  bar.hidden = target === undefined;
  $("replying-text").textContent = target === undefined ? "" : `↪ ${quote(target.message)}`;
  if (target !== undefined) $<HTMLInputElement>("composer").focus();
}

function addMessage(m: Message, key: bigint = m.id): void {
  if (open === undefined || open.items.has(key)) return;
  const li = document.createElement("li");
  if (m.kind === MessageKind.System) {
    li.className = "system";
    li.textContent = describeSystem(m);
  } else {
    const mine = m.sender === me();
    if (mine) li.classList.add("mine");
    if (!mine && open.thread.kind === ThreadKind.Group) {
      const from = document.createElement("div");
      from.className = "from";
      from.textContent = handles.get(m.sender) ?? `user ${m.sender}`;
      li.append(from);
    }
    const reply = document.createElement("div");
    reply.className = "reply";
    reply.hidden = true;
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = m.recalled ? "(recalled)" : m.kind === MessageKind.Media ? "(media)" : utf8.decode(m.body);
    const meta = document.createElement("div");
    meta.className = "meta";
    const edited = document.createElement("span");
    edited.className = "edited";
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = timeOf(m.id);
    meta.append(edited, time);
    if (mine) {
      const t = document.createElement("span");
      t.className = "tick";
      meta.append(" ", t);
    }
    const reactions = document.createElement("div");
    reactions.className = "reactions";
    const actions = document.createElement("div");
    actions.className = "actions";
    const replyBtn = document.createElement("button");
    replyBtn.type = "button";
    replyBtn.className = "reply-btn";
    replyBtn.textContent = "↪";
    replyBtn.title = "reply";
    const reactBtn = document.createElement("button");
    reactBtn.type = "button";
    reactBtn.className = "react-btn";
    reactBtn.textContent = QUICK_REACTION;
    reactBtn.title = `react with ${QUICK_REACTION}`;
    actions.append(replyBtn, reactBtn);
    li.append(reply, body, meta, reactions, actions);
  }
  const item: Item = { li, message: m, meta: noMeta(m.id) };
  const replyBtn = li.querySelector<HTMLButtonElement>(".reply-btn");
  if (replyBtn !== null) replyBtn.onclick = () => item.message.id !== 0n && setReplyTo(item.message.id);
  const reactBtn = li.querySelector<HTMLButtonElement>(".react-btn");
  if (reactBtn !== null) reactBtn.onclick = () => react(item, QUICK_REACTION);
  open.items.set(key, item);
  const ol = $("messages");
  ol.append(li);
  ol.scrollTop = ol.scrollHeight;
  renderTicks();
}

/** Message ids are microseconds since the epoch; a pending send has none yet. */
function timeOf(id: bigint): string {
  return id > 0n ? new Date(Number(id / 1000n)).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

function renderTicks(): void {
  if (open === undefined) return;
  for (const { li, message } of open.items.values()) {
    const el = li.querySelector<HTMLElement>(".tick");
    if (el === null) continue;
    if (message.id === 0n) {
      el.textContent = "🕓";
      el.title = "sending";
      continue;
    }
    const t = tick(open.thread.members, me(), message.id);
    el.textContent = tickSymbol(t);
    el.className = t === Tick.Read ? "tick read" : "tick";
    el.title = t === Tick.Read ? "read" : t === Tick.Delivered ? "delivered" : "sent";
    li.dataset.tick = el.title;
  }
}

function onMessage(m: Message): void {
  const c = client!;
  if (isChange(m)) {
    applyChange(m);
    return;
  }
  if (open?.thread.id === m.thread) {
    applySent(open.thread.members, m);
    addMessage(m);
    open.typers.delete(m.sender);
    renderTyping();
    markRead();
  } else if (m.sender !== me()) {
    void c.receipt(m.thread, ReceiptKind.Delivered, m.id).catch(() => {});
  }
  const summary = threads.find((t) => t.id === m.thread);
  if (summary === undefined) {
    void loadThreads();
    return;
  }
  summary.lastMsgId = m.id;
  if (m.sender !== me() && open?.thread.id !== m.thread) summary.unread += 1;
  threads.sort((a, b) => (a.lastMsgId > b.lastMsgId ? -1 : a.lastMsgId < b.lastMsgId ? 1 : 0));
  renderThreads();
}

function onTyping(thread: bigint, user: bigint, active: boolean): void {
  if (open?.thread.id !== thread || user === me()) return;
  if (active) open.typers.set(user, Date.now() + TYPING_SHOWN_MS);
  else open.typers.delete(user);
  renderTyping();
  if (active) setTimeout(renderTyping, TYPING_SHOWN_MS + 50);
}

function renderTyping(): void {
  if (open === undefined) return;
  const now = Date.now();
  const names = [...open.typers].filter(([, until]) => until > now).map(([u]) => handles.get(u) ?? `user ${u}`);
  $("typing").textContent = names.length === 0 ? "" : `${names.join(", ")} ${names.length === 1 ? "is" : "are"} typing…`;
}

function typed(): void {
  if (open === undefined || client === undefined) return;
  const thread = open.thread.id;
  const now = Date.now();
  if (now - typingSentAt > TYPING_EVERY_MS) {
    typingSentAt = now;
    try {
      client.typing(thread, true);
    } catch {
      // Offline: nobody to tell.
    }
  }
  clearTimeout(typingIdle);
  typingIdle = window.setTimeout(() => stopTyping(thread), TYPING_IDLE_MS);
}

function stopTyping(thread: bigint): void {
  clearTimeout(typingIdle);
  if (typingSentAt === 0) return;
  typingSentAt = 0;
  try {
    client?.typing(thread, false);
  } catch {
    // Offline.
  }
}

async function send(text: string): Promise<void> {
  if (open === undefined || client === undefined) return;
  const view = open;
  const thread = view.thread.id;
  stopTyping(thread);
  const clientMsgId = newClientMsgId();
  const replyTo = view.replyTo;
  setReplyTo(0n);
  const pending: Message = {
    thread,
    id: 0n,
    sender: me(),
    clientMsgId,
    kind: MessageKind.Text,
    recalled: false,
    body: new TextEncoder().encode(text),
  };
  addMessage(pending, -clientMsgId);
  const shown = view.items.get(-clientMsgId);
  if (shown !== undefined && replyTo !== 0n) {
    shown.meta.replyTo = replyTo;
    renderExtras(shown);
  }
  try {
    const sent = await client.sendWithRetry(thread, MessageKind.Text, text, 60_000, clientMsgId, replyTo);
    const item = view.items.get(-clientMsgId);
    if (item === undefined) return;
    view.items.delete(-clientMsgId);
    item.message = { ...pending, id: sent.message };
    item.meta.id = sent.message;
    view.items.set(sent.message, item);
    const time = item.li.querySelector(".time");
    if (time !== null) time.textContent = timeOf(sent.message);
    applySent(view.thread.members, item.message);
    renderTicks();
  } catch (e) {
    const item = view.items.get(-clientMsgId);
    if (item !== undefined) item.li.title = e instanceof Error ? e.message : String(e);
    say("typing", e);
  }
}

function wire(): void {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    void enter("login");
  });
  $("register-btn").addEventListener("click", () => void enter("register"));
  $("logout-btn").addEventListener("click", () => {
    const c = client;
    client = undefined;
    open = undefined;
    void c?.logout().catch(() => c.close());
    showLogin();
  });
  $("new-chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("new-chat-handle");
    $("new-chat-error").textContent = "";
    void (async () => {
      const user = await client!.lookupUser(input.value.trim());
      handles.set(user.id, user.handle);
      const t = await client!.openDirect(user.id);
      input.value = "";
      if (!threads.some((x) => x.id === t.id)) await loadThreads();
      await openThread(t.id);
    })().catch((e) => say("new-chat-error", e instanceof ClientError && e.code === ErrorCode.UnknownUser ? "No such user." : e));
  });
  $("send-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>("composer");
    const text = input.value;
    if (text.trim() === "") return;
    input.value = "";
    void send(text);
  });
  $("composer").addEventListener("input", typed);
  $("replying-cancel").addEventListener("click", () => setReplyTo(0n));
  document.addEventListener("visibilitychange", markRead);
}

async function start(): Promise<void> {
  wire();
  const server = defaultServer();
  if (localStorage.getItem("courier.token") !== null) {
    try {
      const c = await connect(server);
      await c.resumeSaved();
      await showChat();
      return;
    } catch (e) {
      showLogin(e instanceof Error ? e.message : String(e));
      return;
    }
  }
  showLogin();
}

void start();
