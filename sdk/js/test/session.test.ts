/**
 * The session driven by hand: bytes in (whole, one at a time, in random splits), a fake
 * clock, and what comes out. Ported from protocol/src/session/tests.rs.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { Decoder, encodeInto, MAX_FRAME_LEN, VERSION, type Envelope } from "../src/codec.js";
import { ErrorCode } from "../src/errors.js";
import { frame, MessageKind, type AuthOk, type Frame, type Welcome } from "../src/frames.js";
import {
  closeCode,
  Session,
  SessionError,
  type CloseReason,
  type SessionConfig,
  type SessionEvent,
} from "../src/session.js";
import { Writer } from "../src/wire.js";
import { rng } from "./helpers.js";

const HEARTBEAT = 10_000;

function config(): SessionConfig {
  return { clientName: "test/1" };
}

function welcome(heartbeatSecs: number): Welcome {
  return frame("Welcome", { version: VERSION, maxFrame: 65536, heartbeatSecs, node: "n1" });
}

function authOk(): AuthOk {
  return frame("AuthOk", {
    user: 7n,
    device: 1,
    token: new Uint8Array(32).fill(9),
    handle: "alice",
    watermark: 42n,
  });
}

function error(code: number): Frame {
  return frame("ErrorReply", { code, message: "no" });
}

function push(id: bigint): Frame {
  return frame("MessagePush", {
    message: {
      thread: 1n,
      id,
      sender: 0n,
      clientMsgId: 0n,
      kind: MessageKind.Text,
      recalled: false,
      body: new Uint8Array(),
    },
    replyTo: 0n,
  });
}

const contactList = (): Frame => frame("ContactList", {});
const contacts = (): Frame => frame("Contacts", { users: [] });
const done = (): Frame => frame("Done", {});

/** The server's side of the wire: frames encoded back to back. */
function wire(frames: Array<[number, Frame]>): Uint8Array {
  const w = new Writer();
  for (const [id, f] of frames) encodeInto(w, id, f);
  return w.toBytes();
}

/** Everything the session wants written, decoded. */
function sent(s: Session): Envelope[] {
  const d = new Decoder(MAX_FRAME_LEN);
  d.push(s.pollTransmit());
  const out: Envelope[] = [];
  for (let env = d.next(); env !== undefined; env = d.next()) out.push(env);
  assert.equal(d.buffered, 0, "whole frames only");
  return out;
}

function events(s: Session): SessionEvent[] {
  const out: SessionEvent[] = [];
  for (let e = s.pollEvent(); e !== undefined; e = s.pollEvent()) out.push(e);
  return out;
}

/** A session that has said HELLO and got WELCOME at `t0`. */
function welcomed(t0: number, heartbeatSecs: number): Session {
  const s = new Session(config(), t0);
  const hello = sent(s);
  s.handleInput(wire([[hello[0]!.requestId, welcome(heartbeatSecs)]]), t0);
  assert.deepEqual(events(s), [{ kind: "welcomed", welcome: welcome(heartbeatSecs) }]);
  return s;
}

function login(): Frame {
  return frame("Login", { handle: "alice", password: "password1", device: "laptop" });
}

function closed(reason: CloseReason): SessionEvent {
  return { kind: "closed", reason };
}

function sessionError(kind: string) {
  return (e: unknown) => e instanceof SessionError && e.detail.kind === kind;
}

test("hello is the first frame and nothing times out before welcome", () => {
  const t0 = 1000;
  const s = new Session(config(), t0);
  assert.equal(s.state, "AwaitWelcome");
  assert.deepEqual(sent(s), [
    { requestId: 1, frame: frame("Hello", { version: VERSION, client: "test/1" }) },
  ]);
  assert.equal(s.pollTimeout(), undefined);
  s.handleTimeout(t0 + 3_600_000);
  assert.deepEqual(sent(s), []);
  assert.deepEqual(events(s), []);
  assert.throws(
    () => s.sendRequest(frame("Hello", { version: 1, client: "again" })),
    sessionError("HelloIsAutomatic"),
  );
});

test("welcome fed one byte at a time completes on the last byte", () => {
  const t0 = 0;
  const s = new Session(config(), t0);
  sent(s);
  const bytes = wire([[1, welcome(30)]]);
  for (let i = 0; i < bytes.length; i++) {
    s.handleInput(bytes.subarray(i, i + 1), t0);
    const got = events(s);
    if (i + 1 < bytes.length) {
      assert.deepEqual(got, [], `event after ${i + 1} bytes`);
      assert.equal(s.state, "AwaitWelcome");
    } else {
      assert.deepEqual(got, [{ kind: "welcomed", welcome: welcome(30) }]);
    }
  }
  assert.equal(s.state, "Welcomed");
  assert.deepEqual(s.welcome, welcome(30));
  assert.equal(s.maxSendFrame(), 65536);
});

test("any split of the input gives the same events", () => {
  const script = (s: Session): [Uint8Array, number[]] => {
    sent(s);
    const auth = s.sendRequest(login());
    const a = s.sendRequest(contactList());
    const b = s.sendRequest(contactList());
    const bytes = wire([
      [1, welcome(30)],
      [auth, authOk()],
      [0, push(1n)],
      [b, contacts()],
      [0, push(2n)],
      [a, error(ErrorCode.RateLimited)],
      [0, error(ErrorCode.ShuttingDown)],
    ]);
    return [bytes, [auth, a, b]];
  };
  const t0 = 0;
  const whole = new Session(config(), t0);
  const [bytes, [auth, a, b]] = script(whole);
  whole.handleInput(bytes, t0);
  const expected = events(whole);
  assert.deepEqual(expected, [
    { kind: "welcomed", welcome: welcome(30) },
    { kind: "authenticated", requestId: auth, auth: authOk() },
    { kind: "push", frame: push(1n) },
    { kind: "reply", requestId: b, frame: contacts() },
    { kind: "push", frame: push(2n) },
    { kind: "reply", requestId: a, frame: error(ErrorCode.RateLimited) },
    closed({ kind: "Server", code: ErrorCode.ShuttingDown, message: "no" }),
  ]);

  const oneByOne = new Session(config(), t0);
  script(oneByOne);
  for (let i = 0; i < bytes.length; i++) oneByOne.handleInput(bytes.subarray(i, i + 1), t0);
  assert.deepEqual(events(oneByOne), expected);

  for (let seed = 0; seed < 200; seed++) {
    const next = rng(seed);
    const s = new Session(config(), t0);
    script(s);
    let rest = bytes;
    const got: SessionEvent[] = [];
    while (rest.length > 0) {
      const n = 1 + next(Math.min(rest.length, 40));
      s.handleInput(rest.subarray(0, n), t0);
      rest = rest.subarray(n);
      got.push(...events(s));
    }
    assert.deepEqual(got, expected, `seed ${seed}`);
  }
});

test("register, login and resume each authenticate", () => {
  const frames: Frame[] = [
    frame("Register", { handle: "alice", password: "password1", device: "laptop" }),
    login(),
    frame("Resume", { token: new Uint8Array(32).fill(9) }),
  ];
  for (const f of frames) {
    const s = welcomed(0, 30);
    const id = s.sendRequest(f);
    assert.deepEqual(sent(s), [{ requestId: id, frame: f }]);
    s.handleInput(wire([[id, authOk()]]), 0);
    assert.deepEqual(events(s), [{ kind: "authenticated", requestId: id, auth: authOk() }], f.type);
    assert.equal(s.state, "Authenticated");
    assert.equal(s.outstanding, 0);
  }
});

test("a refused login is a reply and the session stays open for another try", () => {
  const s = welcomed(0, 30);
  const first = s.sendRequest(login());
  s.handleInput(wire([[first, error(ErrorCode.BadCredentials)]]), 0);
  assert.deepEqual(events(s), [
    { kind: "reply", requestId: first, frame: error(ErrorCode.BadCredentials) },
  ]);
  assert.equal(s.state, "Welcomed");
  const second = s.sendRequest(login());
  assert.notEqual(second, first);
  s.handleInput(wire([[second, authOk()]]), 0);
  const got = events(s);
  assert.equal(got.length, 1);
  assert.ok(got[0]!.kind === "authenticated" && got[0]!.requestId === second);
  const third = s.sendRequest(login());
  s.handleInput(wire([[third, error(ErrorCode.AlreadyAuthenticated)]]), 0);
  assert.equal(s.state, "Authenticated");
  assert.equal(events(s).length, 1);
});

test("a redirect instead of auth ok names the node then closes", () => {
  const s = welcomed(0, 30);
  const id = s.sendRequest(login());
  s.handleInput(wire([[0, frame("Redirect", { node: "n2", addr: "10.0.0.2:7878", key: new Uint8Array(32).fill(0x4b) })]]), 0);
  assert.deepEqual(events(s), [
    { kind: "redirect", node: "n2", addr: "10.0.0.2:7878", key: new Uint8Array(32).fill(0x4b) },
    closed({ kind: "Redirected" }),
  ]);
  assert.equal(s.outstanding, 0, "the login gets no answer of its own");
  s.handleInput(wire([[id, authOk()]]), 0);
  assert.deepEqual(events(s), []);
  assert.throws(() => s.sendRequest(login()), sessionError("Closed"));
});

test("a handshake refusal and a wrong version close with their reason", () => {
  let s = new Session(config(), 0);
  sent(s);
  s.handleInput(wire([[1, error(ErrorCode.UnsupportedVersion)]]), 0);
  const reason: CloseReason = { kind: "HandshakeRefused", code: ErrorCode.UnsupportedVersion, message: "no" };
  assert.equal(closeCode(reason), ErrorCode.UnsupportedVersion);
  assert.deepEqual(events(s), [closed(reason)]);

  s = new Session(config(), 0);
  sent(s);
  s.handleInput(wire([[1, { ...welcome(30), version: 2 }]]), 0);
  assert.deepEqual(events(s), [closed({ kind: "VersionMismatch", server: 2 })]);
  assert.equal(s.state, "Closed");
  assert.equal(s.pollTimeout(), undefined);
});

test("error reply with request id 0 is the close reason, known code or not", () => {
  for (const code of [ErrorCode.SessionRevoked, ErrorCode.SlowConsumer, 999]) {
    const s = welcomed(0, 30);
    const waiting = s.sendRequest(contactList());
    s.handleInput(wire([[0, frame("ErrorReply", { code, message: "bye" })]]), 0);
    const reason: CloseReason = { kind: "Server", code, message: "bye" };
    assert.equal(closeCode(reason), code === 999 ? undefined : code);
    assert.deepEqual(events(s), [closed(reason)]);
    s.handleInput(wire([[waiting, contacts()]]), 0);
    s.handleTransportClosed();
    s.close();
    assert.deepEqual(events(s), [], "closed comes once");
  }
});

test("bytes that do not decode and frames a server must not send close the session", () => {
  let s = welcomed(0, 30);
  s.handleInput(Uint8Array.of(0, 0, 0, 5, 0x7e, 0, 0, 0, 1), 0);
  let got = events(s);
  assert.equal(got.length, 1);
  let ev = got[0]!;
  assert.ok(ev.kind === "closed" && ev.reason.kind === "Malformed");
  assert.equal(ev.reason.error.message, "unknown frame type 0x7e");

  s = welcomed(0, 30);
  s.handleInput(Uint8Array.of(0x7f, 0, 0, 0), 0);
  got = events(s);
  ev = got[0]!;
  assert.ok(ev.kind === "closed" && ev.reason.kind === "Malformed");
  assert.equal(ev.reason.error.detail.kind, "FrameTooLarge");

  const cases: Array<[boolean, Frame, string]> = [
    [false, contactList(), "ContactList"],
    [false, done(), "Done"],
    [true, welcome(30), "Welcome"],
  ];
  for (const [toRequest, f, name] of cases) {
    const s = welcomed(0, 30);
    const id = s.sendRequest(contactList());
    const rid = toRequest ? id : 0;
    s.handleInput(wire([[0, push(1n)], [rid, f], [0, push(2n)]]), 0);
    assert.deepEqual(events(s), [
      { kind: "push", frame: push(1n) },
      closed({ kind: "UnexpectedFrame", name: name as Frame["type"], requestId: rid }),
    ]);
  }
});

test("replies out of order reach their requests and strays are dropped", () => {
  const s = welcomed(0, 30);
  const ids = [0n, 1n, 2n].map((i) =>
    s.sendRequest(frame("Send", { thread: 1n, clientMsgId: i, kind: MessageKind.Text, body: new Uint8Array(), replyTo: 0n })),
  );
  assert.deepEqual(ids, [2, 3, 4], "HELLO had 1");
  const typing = s.sendRequest(frame("Typing", { thread: 1n, active: true }));
  assert.equal(s.outstanding, 3, "TYPING is never answered and holds no id");
  const sentFrame = (i: bigint): Frame => frame("Sent", { thread: 1n, message: 100n + i, clientMsgId: i });
  s.handleInput(
    wire([
      [ids[2]!, sentFrame(2n)],
      [typing, done()],
      [77, done()],
      [ids[0]!, sentFrame(0n)],
      [ids[0]!, sentFrame(9n)],
      [ids[1]!, sentFrame(1n)],
    ]),
    0,
  );
  const expect = (i: number): SessionEvent => ({ kind: "reply", requestId: ids[i]!, frame: sentFrame(BigInt(i)) });
  assert.deepEqual(events(s), [expect(2), expect(0), expect(1)]);
  assert.equal(s.outstanding, 0);
});

test("a cancelled request keeps its id until its late reply, which is dropped", () => {
  const s = welcomed(0, 30);
  const gaveUp = s.sendRequest(contactList());
  assert.ok(s.cancel(gaveUp));
  assert.ok(!s.cancel(gaveUp), "already cancelled");
  assert.ok(!s.cancel(12345), "never sent");
  s.setNextIdForTest(gaveUp);
  assert.equal(s.sendRequest(contactList()), gaveUp + 1);
  s.handleInput(wire([[gaveUp, contacts()]]), 0);
  assert.deepEqual(events(s), [], "the late reply is dropped");
  s.setNextIdForTest(gaveUp);
  assert.equal(s.sendRequest(contactList()), gaveUp);
});

test("request ids wrap past 2^32-1 to 1 and skip outstanding ids", () => {
  const s = welcomed(0, 30);
  assert.equal(s.sendRequest(contactList()), 2);
  const max = 0xffff_ffff;
  s.setNextIdForTest(max - 1);
  const ids = [0, 1, 2, 3].map(() => s.sendRequest(contactList()));
  assert.deepEqual(ids, [max - 1, max, 1, 3]);
  assert.deepEqual(sent(s).map((e) => e.requestId), [2, max - 1, max, 1, 3]);
  s.handleInput(wire([[max, done()]]), 0);
  assert.deepEqual(events(s), [{ kind: "reply", requestId: max, frame: done() }]);
});

test("outstanding requests are bounded and a reply frees a place", () => {
  const s = new Session({ ...config(), maxOutstanding: 3 }, 0);
  sent(s);
  s.handleInput(wire([[1, welcome(1)]]), 0);
  const a = s.sendRequest(contactList());
  s.sendRequest(contactList());
  const c = s.sendRequest(contactList());
  assert.ok(s.cancel(c), "a cancelled request still counts");
  assert.throws(() => s.sendRequest(contactList()), sessionError("TooManyOutstanding"));
  s.sendRequest(frame("Typing", { thread: 1n, active: false }));
  s.handleTimeout(1000);
  assert.deepEqual(sent(s).at(-1)!.frame, frame("Ping", { nonce: 1n }));
  assert.equal(s.outstanding, 4);
  assert.throws(() => s.sendRequest(contactList()), /wait for replies/);
  s.handleInput(wire([[a, done()]]), 0);
  assert.equal(s.outstanding, 3);
  assert.throws(() => s.sendRequest(contactList()), sessionError("TooManyOutstanding"), "the PING's place is taken until its PONG");
  s.handleInput(wire([[c, done()]]), 0);
  s.sendRequest(contactList());
});

test("heartbeat pings on schedule and pong is consumed", () => {
  const t0 = 5000;
  const s = welcomed(t0, 10);
  assert.equal(s.pollTimeout(), t0 + HEARTBEAT);
  s.handleTimeout(t0 + HEARTBEAT - 1);
  assert.deepEqual(sent(s), [], "not due yet");
  s.sendRequest(contactList());
  sent(s);
  s.handleTimeout(t0 + HEARTBEAT);
  const ping = sent(s);
  assert.equal(ping.length, 1);
  assert.deepEqual(ping[0]!.frame, frame("Ping", { nonce: 1n }));
  assert.equal(s.pollTimeout(), t0 + 2 * HEARTBEAT);
  s.handleInput(wire([[ping[0]!.requestId, frame("Pong", { nonce: 1n })]]), t0 + HEARTBEAT + 5);
  assert.deepEqual(events(s), [], "PONG is the session's own");
  s.handleTimeout(t0 + 2 * HEARTBEAT);
  assert.deepEqual(sent(s)[0]!.frame, frame("Ping", { nonce: 2n }));
});

test("three heartbeats of silence close the session and any input defers it", () => {
  const t0 = 0;
  const s = welcomed(t0, 10);
  for (let i = 1; i <= 2; i++) {
    const now = t0 + HEARTBEAT * i;
    assert.equal(s.pollTimeout(), now);
    s.handleTimeout(now);
    assert.equal(sent(s).length, 1);
  }
  const t25 = t0 + 25_000;
  s.handleInput(wire([[0, push(1n)]]), t25);
  events(s);
  s.handleTimeout(t0 + 3 * HEARTBEAT);
  assert.equal(sent(s).length, 1, "third ping");
  assert.deepEqual(events(s), []);
  const dead = t25 + 3 * HEARTBEAT;
  let now = t0 + 3 * HEARTBEAT;
  for (let deadline = s.pollTimeout(); deadline !== undefined; deadline = s.pollTimeout()) {
    assert.ok(deadline > now, "time moves on");
    now = deadline;
    s.handleTimeout(now);
    sent(s);
  }
  assert.equal(now, dead);
  assert.deepEqual(events(s), [closed({ kind: "TimedOut", silentForMs: 3 * HEARTBEAT })]);
  assert.ok(s.isClosed());
});

test("no heartbeat when the server announces 0", () => {
  const s = welcomed(0, 0);
  assert.equal(s.pollTimeout(), undefined);
  s.handleTimeout(86_400_000);
  assert.deepEqual(sent(s), []);
  assert.deepEqual(events(s), []);
});

test("the caller errors say what is wrong", () => {
  const s = welcomed(0, 30);
  assert.throws(() => s.sendRequest(done()), sessionError("NotARequest"));
  assert.throws(() => s.sendRequest(push(1n)), /MessagePush is not a request/);
  const big = frame("Send", { thread: 1n, clientMsgId: 0n, kind: MessageKind.Text, body: new Uint8Array(70_000), replyTo: 0n });
  assert.throws(
    () => s.sendRequest(big),
    (e: unknown) =>
      e instanceof SessionError &&
      e.detail.kind === "FrameTooLarge" &&
      e.detail.name === "Send" &&
      e.detail.max === 65536 &&
      e.detail.len > 70_000,
  );
  assert.deepEqual(sent(s), [], "nothing refused is queued");
  s.close();
  assert.deepEqual(events(s), [closed({ kind: "Local" })]);
  assert.throws(() => s.sendRequest(contactList()), sessionError("Closed"));
});

test("the transport closing ends the session once and drops what was unsent", () => {
  const s = new Session(config(), 0);
  s.handleTransportClosed();
  s.handleTransportClosed();
  assert.deepEqual(events(s), [closed({ kind: "TransportClosed" })]);
  assert.deepEqual(sent(s), [], "HELLO is not written to a closed transport");
});

test("poll transmit hands out each frame once", () => {
  const s = new Session(config(), 0);
  assert.ok(s.pollTransmit().length > 0);
  assert.equal(s.pollTransmit().length, 0, "taken once");
  s.sendRequest(contactList());
  assert.equal(s.pollTransmit().length, 9);
});

test("take undecoded hands over a partial frame and closes", () => {
  const s = welcomed(0, 0);
  const first = wire([[0, push(5n)]]);
  const bytes = wire([[0, push(5n)], [0, push(6n)]]);
  s.handleInput(bytes.subarray(0, bytes.length - 3), 0);
  assert.deepEqual(events(s), [{ kind: "push", frame: push(5n) }]);
  const rest = s.takeUndecoded();
  assert.equal(rest.length, bytes.length - 3 - first.length);
  assert.deepEqual(events(s), [closed({ kind: "Local" })]);
  const d = new Decoder(MAX_FRAME_LEN);
  d.push(rest);
  d.push(bytes.subarray(bytes.length - 3));
  assert.deepEqual(d.next()!.frame, push(6n));
});

test("a refused request leaves nothing queued before or after it", () => {
  const s = welcomed(0, 30);
  const first = s.sendRequest(contactList());
  const big = frame("Send", { thread: 1n, clientMsgId: 0n, kind: MessageKind.Text, body: new Uint8Array(70_000), replyTo: 0n });
  assert.throws(() => s.sendRequest(big), sessionError("FrameTooLarge"));
  assert.throws(() => s.sendRequest(frame("Ping", { nonce: -1n })), /Ping\.nonce/);
  const second = s.sendRequest(contactList());
  assert.deepEqual(
    sent(s).map((e) => [e.requestId, e.frame.type]),
    [[first, "ContactList"], [second, "ContactList"]],
  );
  assert.equal(second, first + 1, "refused requests took no id");
});
