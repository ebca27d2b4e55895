// Noise transport figures of the TypeScript library in Node, for BENCHMARKS.md: whole
// handshakes per second (client and server in this one process, as the Rust figure in
// protocol/NOISE.md section 5 is measured), X25519 operations per second, and records
// (seal + open) per second and in MiB/s for 100-byte and 16 KiB plaintexts. Each figure is
// the median of 3 runs, per second of CPU time (process.cpuUsage, as the Rust figures count
// thread CPU time, so a loaded machine skews them less) and, in brackets, of wall time.
// Build first: `npm run build` (in sdk/js); then `node bench/noise.mjs`.

import { Handshake } from "../dist/src/noise/handshake.js";
import { generateKeypair } from "../dist/src/noise/keys.js";
import { x25519 } from "../dist/src/noise/x25519.js";

const RUNS = 3;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Runs `fn` repeatedly for about `ms` ms of wall time; returns [per CPU second, per wall second]. */
function rate(fn, ms) {
  let n = 0;
  const cpu0 = process.cpuUsage();
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    fn();
    n++;
    now = performance.now();
  }
  const cpu = process.cpuUsage(cpu0);
  return [(n * 1e6) / (cpu.user + cpu.system), (n * 1000) / (now - start)];
}

const mib = ([cpu, wall]) => [(cpu * 16384) / (1 << 20), (wall * 16384) / (1 << 20)];

const server = generateKeypair();

function handshake(pattern) {
  const client = Handshake.initiator({ pattern, local: generateKeypair(), pinned: pattern === "IK" ? server.publicKey : undefined });
  const responder = Handshake.responder({ local: server });
  let c, s;
  let toServer = client.takeOutput();
  while (toServer !== undefined) {
    s = responder.read(toServer) ?? s;
    const toClient = responder.takeOutput();
    if (toClient === undefined) break;
    c = client.read(toClient) ?? c;
    toServer = client.takeOutput();
  }
  if (c === undefined || s === undefined) throw new Error("handshake did not finish");
  return [c.transport, s.transport];
}

function records(size) {
  const [c, s] = handshake("IK");
  const plain = new Uint8Array(size).fill(7);
  return () => {
    for (const p of s.open(c.seal(plain))) if (p.length !== size) throw new Error("bad record");
  };
}

const figures = [
  ["X25519 operations/s", () => { const k = generateKeypair(); return rate(() => x25519(k.privateKey, server.publicKey), 1500); }],
  ["XX handshakes/s (both sides)", () => rate(() => handshake("XX"), 2000)],
  ["IK handshakes/s (both sides)", () => rate(() => handshake("IK"), 2000)],
  ["100-byte records, seal+open/s", () => rate(records(100), 1500)],
  ["16 KiB records, seal+open MiB/s", () => mib(rate(records(16384), 1500))],
];

console.log(`node ${process.version}, ${new Date().toISOString()}, median of ${RUNS}: per CPU second [per wall second]`);
for (const [name, measure] of figures) {
  measure(); // warm up the JIT
  const runs = [];
  for (let i = 0; i < RUNS; i++) runs.push(measure());
  const fmt = (x) => (x >= 100 ? Math.round(x).toLocaleString("en-US") : x.toFixed(1));
  const cpu = runs.map((r) => r[0]);
  const wall = runs.map((r) => r[1]);
  console.log(`${name}: ${cpu.map(fmt).join(" / ")} -> median ${fmt(median(cpu))} [wall ${fmt(median(wall))}]`);
}
