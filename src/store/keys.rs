//! Every storage key, built and parsed in one place.
//!
//! Keys are fixed-width big-endian byte arrays, so RocksDB's bytewise order is numeric order:
//! a thread's messages sort by (thread, message id), a user's memberships by (user, thread).
//! Each column family holds one kind of key; the decoders check the width and reject anything
//! else, so a key of the wrong family can never be misread.
//!
//! | column family | key                         | value (see `records.rs`)          |
//! |---------------|-----------------------------|-----------------------------------|
//! | `messages`    | thread u64 ++ message u64   | `MessageRecord`                   |
//! | `threads`     | thread u64                  | `ThreadRecord`                    |
//! | `members`     | thread u64 ++ user u64      | `MemberRecord` (role, cursors)    |
//! | `memberships` | user u64 ++ thread u64      | `PrivateState` (muted, label…, change marker, tombstone) |
//! | `direct`      | low user u64 ++ high user u64 | thread u64                      |
//! | `dedupe`      | thread u64 ++ sender u64 ++ client id u64 | message u64         |
//! | `hidden`      | user u64 ++ thread u64 ++ message u64 | clock u64 of the delete-for-me (empty before it was stamped) |
//! | `users`       | user u64                    | `UserRecord`                      |
//! | `handles`     | handle bytes                | user u64                          |
//! | `tokens`      | token digest (16 bytes)     | `TokenRecord`                     |
//! | `user_tokens` | user u64 ++ token digest    | empty (for logout-all)            |
//! | `devices`     | user u64 ++ device name     | device u32                        |
//! | `contacts`    | user u64 ++ contact u64     | empty                             |
//! | `last_seen`   | user u64                    | microseconds u64                  |
//! | `media`       | `m` ++ media id (32)        | `MediaHeader` of a stored blob (the bytes are a file, see `media::blob`) |
//! |               | `o` ++ media id ++ user u64 | empty: the user uploaded it (may read it; charged to their quota) |
//! |               | `t` ++ media id ++ thread u64 | i64: messages of the thread that refer to it and are not recalled (merge operator: sum; above 0, its members may read it; empty: stored before counts, one) |
//! |               | `u` ++ user u64             | i64: bytes of stored media the user uploaded (merge operator: sum) |
//! | `meta`        | name bytes                  | counters (ids, clock floor)       |
//! | `admins`      | user u64                    | microseconds u64 of the grant (`courier admin grant`) |
//! | `reactions`   | thread u64 ++ message u64 ++ user u64 | the user's reaction, UTF-8 (counts are in the `MessageRecord`) |
//! | `pushers`     | user u64                    | `PusherSet`: the user's push registrations, every device |
//! | `push_outbox` | user u64                    | `OutboxRow`: the user's one pending notification (merge operator: `OutboxOp`s; empty: none) |

use crate::store::Error;

pub const CF_MESSAGES: &str = "messages";
pub const CF_THREADS: &str = "threads";
pub const CF_MEMBERS: &str = "members";
pub const CF_MEMBERSHIPS: &str = "memberships";
pub const CF_DIRECT: &str = "direct";
pub const CF_DEDUPE: &str = "dedupe";
pub const CF_HIDDEN: &str = "hidden";
pub const CF_USERS: &str = "users";
pub const CF_HANDLES: &str = "handles";
pub const CF_TOKENS: &str = "tokens";
pub const CF_USER_TOKENS: &str = "user_tokens";
pub const CF_DEVICES: &str = "devices";
pub const CF_CONTACTS: &str = "contacts";
pub const CF_LAST_SEEN: &str = "last_seen";
pub const CF_MEDIA: &str = "media";
pub const CF_META: &str = "meta";
/// The retired index of unread messages (thread ++ message → sender): no longer written, and
/// dropped at open once `messages` carries its `seq` (see [`META_MESSAGE_SEQ`]). Not in
/// [`ALL_CFS`].
pub const CF_UNREAD_RETIRED: &str = "unread";
pub const CF_ADMINS: &str = "admins";
pub const CF_REACTIONS: &str = "reactions";
pub const CF_PUSHERS: &str = "pushers";
pub const CF_PUSH_OUTBOX: &str = "push_outbox";

/// Every column family, in creation order.
pub const ALL_CFS: &[&str] = &[
    CF_MESSAGES,
    CF_THREADS,
    CF_MEMBERS,
    CF_MEMBERSHIPS,
    CF_DIRECT,
    CF_DEDUPE,
    CF_HIDDEN,
    CF_USERS,
    CF_HANDLES,
    CF_TOKENS,
    CF_USER_TOKENS,
    CF_DEVICES,
    CF_CONTACTS,
    CF_LAST_SEEN,
    CF_MEDIA,
    CF_META,
    CF_ADMINS,
    CF_REACTIONS,
    CF_PUSHERS,
    CF_PUSH_OUTBOX,
];

/// Bytes of a token digest (the stored form of a session token).
pub const TOKEN_DIGEST: usize = 16;
/// Bytes of a media id: the BLAKE3 hash of the content.
pub const MEDIA_ID: usize = 32;
/// Prefix bytes of the kinds of `media` keys.
pub const MEDIA_META: u8 = b'm';
pub const MEDIA_OWNER: u8 = b'o';
pub const MEDIA_THREAD: u8 = b't';
pub const MEDIA_USAGE: u8 = b'u';
/// In a cluster: the node holding the bytes of media sent in a thread, when not this one.
pub const MEDIA_HOLDER: u8 = b'h';

/// Meta keys. The id counters are per partition, see [`id_counter`].
pub const META_NEXT_USER: &[u8] = b"next_user_id";
pub const META_NEXT_THREAD: &[u8] = b"next_thread_id";
pub const META_CLOCK_FLOOR: &[u8] = b"clock_floor";
/// Written by the retired `unread` index once complete; deleted with it.
pub const META_UNREAD_INDEXED_RETIRED: &[u8] = b"unread_indexed";
/// Present once every message carries its `seq`, every thread its `countable` and every
/// member its `own_floor` (written at open for older stores; see `Store::number_messages`).
pub const META_MESSAGE_SEQ: &[u8] = b"message_seq";
/// Present once every thread record carries the hide mark of its members' hidden
/// conversations (written at open for older stores; see `Store::mark_hidden_threads`).
pub const META_HIDE_MARKS: &[u8] = b"hide_marks";

/// The `meta` key of the id counter `name` ([`META_NEXT_USER`], [`META_NEXT_THREAD`]) of
/// `partition`: the bare name for partition 0 (its key from before partitions, so an existing
/// data directory keeps counting where it was), `name ++ '/' ++ partition u16` for the others.
pub fn id_counter(name: &[u8], partition: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 3);
    k.extend_from_slice(name);
    if partition != 0 {
        k.push(b'/');
        k.extend_from_slice(&partition.to_be_bytes());
    }
    k
}

fn cat<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    for p in parts {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    debug_assert_eq!(at, N);
    out
}

fn u64_at(key: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[at..at + 8]);
    u64::from_be_bytes(b)
}

fn check(cf: &'static str, key: &[u8], len: usize) -> Result<(), Error> {
    if key.len() == len {
        Ok(())
    } else {
        Err(Error::CorruptKey { cf, len: key.len() })
    }
}

/// One u64 id: `threads`, `users`, `last_seen`.
pub fn id(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn parse_id(cf: &'static str, key: &[u8]) -> Result<u64, Error> {
    check(cf, key, 8)?;
    Ok(u64_at(key, 0))
}

/// Two u64 ids: `messages` (thread, message), `members` (thread, user), `memberships`
/// (user, thread), `direct` (low, high), `contacts` (user, contact).
pub fn pair(a: u64, b: u64) -> [u8; 16] {
    cat(&[&a.to_be_bytes(), &b.to_be_bytes()])
}

pub fn parse_pair(cf: &'static str, key: &[u8]) -> Result<(u64, u64), Error> {
    check(cf, key, 16)?;
    Ok((u64_at(key, 0), u64_at(key, 8)))
}

/// A message: `thread ++ message id`. Byte order equals (thread, time) order.
pub fn message(thread: u64, msg: u64) -> [u8; 16] {
    pair(thread, msg)
}

/// The direct thread of two users, whichever asks.
pub fn direct(a: u64, b: u64) -> [u8; 16] {
    pair(a.min(b), a.max(b))
}

/// Three u64 ids: `dedupe` (thread, sender, client id), `hidden` (user, thread, message),
/// `reactions` (thread, message, user).
pub fn triple(a: u64, b: u64, c: u64) -> [u8; 24] {
    cat(&[&a.to_be_bytes(), &b.to_be_bytes(), &c.to_be_bytes()])
}

pub fn parse_triple(cf: &'static str, key: &[u8]) -> Result<(u64, u64, u64), Error> {
    check(cf, key, 24)?;
    Ok((u64_at(key, 0), u64_at(key, 8), u64_at(key, 16)))
}

/// `user_tokens`: user ++ token digest.
pub fn user_token(user: u64, digest: &[u8; TOKEN_DIGEST]) -> [u8; 8 + TOKEN_DIGEST] {
    cat(&[&user.to_be_bytes(), digest])
}

pub fn parse_user_token(key: &[u8]) -> Result<(u64, [u8; TOKEN_DIGEST]), Error> {
    check(CF_USER_TOKENS, key, 8 + TOKEN_DIGEST)?;
    let mut d = [0u8; TOKEN_DIGEST];
    d.copy_from_slice(&key[8..]);
    Ok((u64_at(key, 0), d))
}

/// `devices`: user ++ the device name the client chose.
pub fn device(user: u64, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&user.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

/// `media`: a stored blob's header, `m ++ media id`.
pub fn media_meta(media: &[u8; MEDIA_ID]) -> [u8; 1 + MEDIA_ID] {
    cat(&[&[MEDIA_META], media])
}

pub fn parse_media_meta(key: &[u8]) -> Result<[u8; MEDIA_ID], Error> {
    check(CF_MEDIA, key, 1 + MEDIA_ID)?;
    if key[0] != MEDIA_META {
        return Err(Error::CorruptKey {
            cf: CF_MEDIA,
            len: key.len(),
        });
    }
    let mut m = [0u8; MEDIA_ID];
    m.copy_from_slice(&key[1..]);
    Ok(m)
}

/// `media`: `kind ++ media id ++ id`, for an uploader (`MEDIA_OWNER`, a user) or a referring
/// thread (`MEDIA_THREAD`). A media's entries of one kind share the prefix `kind ++ media id`.
pub fn media_link(kind: u8, media: &[u8; MEDIA_ID], id: u64) -> [u8; 1 + MEDIA_ID + 8] {
    cat(&[&[kind], media, &id.to_be_bytes()])
}

/// The prefix of every [`media_link`] of one kind and media.
pub fn media_links(kind: u8, media: &[u8; MEDIA_ID]) -> [u8; 1 + MEDIA_ID] {
    cat(&[&[kind], media])
}

/// The id (user or thread) of a [`media_link`] key.
pub fn parse_media_link(key: &[u8]) -> Result<u64, Error> {
    check(CF_MEDIA, key, 1 + MEDIA_ID + 8)?;
    Ok(u64_at(key, 1 + MEDIA_ID))
}

/// `media`: `u ++ user`, the bytes of stored media the user uploaded.
pub fn media_usage(user: u64) -> [u8; 9] {
    cat(&[&[MEDIA_USAGE], &user.to_be_bytes()])
}

/// The exclusive upper bound of every key that starts with `prefix` (for range scans).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xFF: no upper bound exists; an empty vector means "to the end".
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn message_key_order_is_thread_then_time(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let ka = message(a.0, a.1);
            let kb = message(b.0, b.1);
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn triple_order_is_lexicographic(a in any::<(u64, u64, u64)>(), b in any::<(u64, u64, u64)>()) {
            prop_assert_eq!(triple(a.0, a.1, a.2).cmp(&triple(b.0, b.1, b.2)), a.cmp(&b));
        }

        #[test]
        fn pair_round_trips(a: u64, b: u64) {
            prop_assert_eq!(parse_pair(CF_MESSAGES, &pair(a, b)).unwrap(), (a, b));
        }

        #[test]
        fn triple_round_trips(a: u64, b: u64, c: u64) {
            prop_assert_eq!(parse_triple(CF_DEDUPE, &triple(a, b, c)).unwrap(), (a, b, c));
        }

        #[test]
        fn prefix_end_bounds_every_extension(p in proptest::collection::vec(any::<u8>(), 1..12), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let end = prefix_end(&p);
            let mut k = p.clone();
            k.extend_from_slice(&tail);
            prop_assert!(end.is_empty() || k < end);
        }
    }

    #[test]
    fn direct_key_ignores_who_asks() {
        assert_eq!(direct(7, 3), direct(3, 7));
        assert_eq!(parse_pair(CF_DIRECT, &direct(7, 3)).unwrap(), (3, 7));
    }

    #[test]
    fn decoders_reject_wrong_widths() {
        assert!(parse_id(CF_USERS, &[0; 7]).is_err());
        assert!(parse_pair(CF_MESSAGES, &[0; 17]).is_err());
        assert!(parse_triple(CF_DEDUPE, &[0; 16]).is_err());
        assert!(parse_user_token(&[0; 8]).is_err());
        assert!(parse_media_meta(&[MEDIA_META; 3]).is_err());
        assert!(parse_media_meta(&media_usage(1)).is_err());
        assert!(parse_media_link(&[0; 3]).is_err());
    }

    #[test]
    fn user_token_and_media_round_trip() {
        let d = [9u8; TOKEN_DIGEST];
        assert_eq!(parse_user_token(&user_token(5, &d)).unwrap(), (5, d));
        let m = [3u8; MEDIA_ID];
        assert_eq!(parse_media_meta(&media_meta(&m)).unwrap(), m);
        let link = media_link(MEDIA_THREAD, &m, 77);
        assert!(link.starts_with(&media_links(MEDIA_THREAD, &m)));
        assert_eq!(parse_media_link(&link).unwrap(), 77);
    }

    #[test]
    fn id_counters_are_distinct_and_partition_zero_keeps_its_old_name() {
        assert_eq!(id_counter(META_NEXT_USER, 0), b"next_user_id");
        assert_eq!(id_counter(META_NEXT_THREAD, 0), b"next_thread_id");
        let mut all = std::collections::HashSet::new();
        for p in 0..1024 {
            assert!(all.insert(id_counter(META_NEXT_USER, p)));
            assert!(all.insert(id_counter(META_NEXT_THREAD, p)));
        }
    }

    #[test]
    fn prefix_end_of_all_ff_is_unbounded() {
        assert!(prefix_end(&[0xFF, 0xFF]).is_empty());
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
    }
}
