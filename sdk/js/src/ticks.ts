/** The ticks next to a sender's own message, from the members' receipt cursors (client/src/ticks.rs). */

import { MessageKind, ReceiptKind, type Member, type Message } from "./frames.js";

/** How far one of the user's own messages has got. */
export const Tick = {
  /** ✓ — durable on the server. */
  Sent: 0,
  /** ✓✓ — reached a device of every other member. */
  Delivered: 1,
  /** ✓✓ (blue) — read by every other member. */
  Read: 2,
} as const;
export type Tick = (typeof Tick)[keyof typeof Tick];

/** The tick as text: ✓ or ✓✓; colour is the caller's business. */
export function tickSymbol(t: Tick): string {
  return t === Tick.Sent ? "✓" : "✓✓";
}

/**
 * The tick of message `message` sent by `me`: delivered (read) when every other member's
 * cursor is at or past it. A thread with no other member counts as read.
 */
export function tick(members: readonly Member[], me: bigint, message: bigint): Tick {
  const others = members.filter((m) => m.user !== me);
  if (others.every((m) => m.read >= message)) return Tick.Read;
  if (others.every((m) => (m.delivered > m.read ? m.delivered : m.read) >= message)) {
    return Tick.Delivered;
  }
  return Tick.Sent;
}

/**
 * Applies a RECEIPT_PUSH to the members' cursors; cursors only move forward and read implies
 * delivered. Returns whether anything moved.
 */
export function applyReceipt(
  members: Member[],
  user: bigint,
  kind: ReceiptKind,
  upTo: bigint,
): boolean {
  const m = members.find((x) => x.user === user);
  if (m === undefined) return false;
  const before = [m.delivered, m.read];
  if (kind === ReceiptKind.Read && upTo > m.read) m.read = upTo;
  if (upTo > m.delivered) m.delivered = upTo;
  return before[0] !== m.delivered || before[1] !== m.read;
}

/**
 * Applies what a new message says about its sender: sending moves the sender's own delivered
 * and read cursors to the message (the server pushes no RECEIPT_PUSH for that move).
 */
export function applySent(members: Member[], message: Message): boolean {
  if (message.kind === MessageKind.System) return false;
  return applyReceipt(members, message.sender, ReceiptKind.Read, message.id);
}
