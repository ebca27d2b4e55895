//! `protocol/vectors.json`: the exact bytes of at least one frame of every type, for people
//! writing a client in another language.
//!
//! The file is generated from [`samples`]. Normally this test checks that the file, the samples
//! and the codec agree; with `COURIER_WRITE_VECTORS=1` it rewrites the file instead.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use courier_protocol::peer::*;
use courier_protocol::*;
use serde_json::{json, Value};

const ALICE: u64 = 17;
const BOB: u64 = 42;
const CAROL: u64 = 50;
const THREAD: u64 = 5;
const GROUP: u64 = 9;
/// A message id: microseconds since the epoch (2023-11-14T22:13:20Z).
const MSG: u64 = 1_700_000_000_000_001;
const TOKEN: [u8; 32] = [0xA5; 32];
/// A media id: the BLAKE3 hash of the content (32 bytes).
const MEDIA: [u8; 32] = [
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
];

fn message(id: u64, body: &'static str) -> Message {
    Message {
        thread: THREAD,
        id,
        sender: ALICE,
        client_msg_id: 901,
        kind: MessageKind::Text,
        recalled: false,
        body: Bytes::from_static(body.as_bytes()),
    }
}

fn system_message(event: SystemEvent) -> Message {
    let mut body = BytesMut::new();
    wire::Wire::put(&event, &mut body);
    Message {
        thread: GROUP,
        id: MSG + 10,
        sender: event.actor,
        client_msg_id: 0,
        kind: MessageKind::System,
        recalled: false,
        body: body.freeze(),
    }
}

fn member(user: u64, role: Role, delivered: u64, read: u64) -> Member {
    Member {
        user,
        role,
        delivered,
        read,
    }
}

fn direct_thread() -> Thread {
    Thread {
        id: THREAD,
        kind: ThreadKind::Direct,
        name: String::new(),
        members: vec![
            member(ALICE, Role::Member, MSG, MSG),
            member(BOB, Role::Member, MSG, 0),
        ],
        last_msg_id: MSG,
        muted: false,
        hidden: false,
        label: "bob".into(),
    }
}

fn group_thread() -> Thread {
    Thread {
        id: GROUP,
        kind: ThreadKind::Group,
        name: "climbing".into(),
        members: vec![
            member(ALICE, Role::Admin, 0, 0),
            member(BOB, Role::Member, 0, 0),
        ],
        last_msg_id: MSG + 10,
        muted: true,
        hidden: false,
        label: String::new(),
    }
}

/// Every sample frame: request id, frame, what it shows. At least one per frame type.
pub fn samples() -> Vec<(u32, Frame, &'static str)> {
    let b = Bytes::from_static;
    vec![
        (1, Hello { version: 1, client: "cli/0.1".into() }.into(), "Handshake: protocol version 1, client name \"cli/0.1\". The worked example in PROTOCOL.md section 11."),
        (2, Register { handle: "alice".into(), password: "correct horse".into(), device: "laptop".into() }.into(), "Create account \"alice\" and log in the device named \"laptop\"."),
        (2, Login { handle: "alice".into(), password: "correct horse".into(), device: "phone".into() }.into(), "Log in as \"alice\" from the device named \"phone\"."),
        (2, Resume { token: Bytes::copy_from_slice(&TOKEN) }.into(), "Resume with a 32-byte token from AUTH_OK."),
        (3, Logout {}.into(), "Log out this device: empty body, len = 5."),
        (3, LogoutAll {}.into(), "Log out every device of the user: empty body."),
        (4, Ping { nonce: 7 }.into(), "Heartbeat with nonce 7."),
        (5, OpenDirect { peer: BOB }.into(), "Open the direct thread with user 42."),
        (6, CreateGroup { name: "climbing".into(), members: vec![BOB, CAROL] }.into(), "Create group \"climbing\" with users 42 and 50 (the creator is added implicitly)."),
        (7, AddMembers { thread: GROUP, members: vec![CAROL] }.into(), "Add user 50 to group thread 9."),
        (8, RemoveMember { thread: GROUP, user: CAROL }.into(), "Remove user 50 from group thread 9."),
        (9, LeaveGroup { thread: GROUP }.into(), "Leave group thread 9."),
        (10, RenameGroup { thread: GROUP, name: "bouldering 🧗".into() }.into(), "Rename group thread 9; the name is UTF-8 (the emoji is 4 bytes)."),
        (11, ListThreads { before_msg_id: 0, before_thread: 0, limit: 50 }.into(), "First page of the thread list, 50 rows."),
        (12, ListThreads { before_msg_id: MSG, before_thread: THREAD, limit: 50 }.into(), "Next page of the thread list, after the row (last_msg_id, thread 5)."),
        (13, GetThread { thread: THREAD }.into(), "Get thread 5 in full."),
        (14, SetThreadState { thread: THREAD, muted: true, hidden: false, label: "bob".into() }.into(), "Mute thread 5 and label it \"bob\"."),
        (15, Send { thread: THREAD, client_msg_id: 901, kind: MessageKind::Text, body: b(b"hi"), reply_to: 0 }.into(), "Send the text \"hi\" to thread 5 with client message id 901."),
        (15, Send { thread: THREAD, client_msg_id: 903, kind: MessageKind::Text, body: b(b"me too"), reply_to: MSG }.into(), "Send \"me too\" to thread 5 as a reply to message MSG of that thread."),
        (16, Send { thread: THREAD, client_msg_id: 902, kind: MessageKind::Media, body: Bytes::copy_from_slice(&MEDIA), reply_to: 0 }.into(), "Send a MEDIA message whose body is the 16-byte media id."),
        (17, History { thread: THREAD, anchor: 0, direction: Direction::Backward, limit: 100 }.into(), "The 100 newest messages of thread 5, newest first."),
        (18, History { thread: THREAD, anchor: MSG, direction: Direction::Forward, limit: 500 }.into(), "Up to 500 messages newer than MSG, oldest first."),
        (19, Receipt { thread: THREAD, kind: ReceiptKind::Delivered, up_to: MSG }.into(), "Everything in thread 5 up to MSG reached this device."),
        (20, Receipt { thread: THREAD, kind: ReceiptKind::Read, up_to: MSG }.into(), "Everything in thread 5 up to MSG was read."),
        (21, Recall { thread: THREAD, message: MSG }.into(), "Recall message MSG of thread 5."),
        (22, DeleteForMe { thread: THREAD, message: MSG }.into(), "Hide message MSG of thread 5 from the caller's own history."),
        (23, Readers { thread: GROUP, message: MSG }.into(), "Who has received and read message MSG of group thread 9."),
        (24, Sync { since: 0, after_thread: 0, after_message: 0, limit: 200, watermark: 0, vector: Tail(None) }.into(), "First sync of a new device: since = 0, first page, watermark 0 (the server takes one); no vector (left out: nothing encoded)."),
        (25, Sync { since: MSG - 1_000_000, after_thread: THREAD, after_message: MSG, limit: 200, watermark: MSG + 10, vector: Tail(None) }.into(), "Second page of a sync with one node: same since, cursor and watermark from the previous batch."),
        (25, Sync { since: MSG - 1_000_000, after_thread: 0, after_message: 0, limit: 200, watermark: MSG - 40, vector: Tail::some(SyncVector { since: vec![MSG - 1_000_000, MSG - 1_000_030, MSG - 999_990], watermarks: vec![MSG + 10, MSG - 40, 0], after_node: 1 }) }.into(), "A page of a sync with a cluster of three nodes: per-node since of the last sync, the walk's watermarks so far (node 2 not reached yet), continuing at the start of node 1's part."),
        (26, Typing { thread: THREAD, active: true }.into(), "Typing in thread 5. Never answered, but still carries a non-zero request id."),
        (38, Edit { thread: THREAD, message: MSG, body: b(b"hi!") }.into(), "Replace the body of the caller's message MSG of thread 5 with \"hi!\"."),
        (39, React { thread: THREAD, message: MSG, reaction: "👍".into() }.into(), "React to message MSG of thread 5 with a thumbs-up (4 bytes of UTF-8)."),
        (40, React { thread: THREAD, message: MSG, reaction: String::new() }.into(), "Remove the caller's reaction to message MSG of thread 5."),
        (27, ContactAdd { user: BOB }.into(), "Add user 42 to contacts."),
        (28, ContactRemove { user: CAROL }.into(), "Remove user 50 from contacts."),
        (29, ContactList {}.into(), "List contacts: empty body."),
        (30, GetUsers { users: vec![BOB, CAROL] }.into(), "Handles of two users by id."),
        (30, LookupUser { handle: "bob".into() }.into(), "Find the user with handle \"bob\"."),
        (31, PresenceSubscribe { users: vec![BOB] }.into(), "Push presence changes of user 42."),
        (32, PresenceQuery { users: vec![BOB, CAROL] }.into(), "Current presence of users 42 and 50."),
        (33, MediaBegin { total_len: 1_048_576, mime: "image/jpeg".into(), hash: Bytes::copy_from_slice(&MEDIA) }.into(), "Begin (or resume) uploading a 1 MiB JPEG whose BLAKE3 hash is the media id."),
        (34, MediaChunk { upload: 3, offset: 0, data: b(b"\xff\xd8\xff\xe0") }.into(), "First chunk of upload 3 (4 bytes shown; real chunks are up to chunk_max)."),
        (35, MediaCommit { upload: 3 }.into(), "Finish upload 3."),
        (36, MediaGet { media: Bytes::copy_from_slice(&MEDIA), offset: 0, max_len: 32_768, thread: THREAD }.into(), "Read the first 32 KiB of a media object seen in thread THREAD."),
        (37, AdminStats {}.into(), "Server counters (admin accounts only): empty body."),
        (41, RegisterPush { app_id: "com.example.chat.ios".into(), pushkey: "a1b2c3".into(), platform: "apns".into(), lang: "en".into(), data: String::new() }.into(), "Register APNs push key \"a1b2c3\" of this device for the gateway's app \"com.example.chat.ios\", no extra data."),
        (42, RegisterPush { app_id: "com.example.chat.android".into(), pushkey: "fcm-token".into(), platform: "fcm".into(), lang: "de".into(), data: r#"{"format":"event_id_only"}"#.into() }.into(), "Register an FCM push key with a JSON data object handed to the gateway."),
        (43, UnregisterPush { app_id: "com.example.chat.ios".into(), pushkey: "a1b2c3".into() }.into(), "Remove the registration of push key \"a1b2c3\"."),
        (5, Done {}.into(), "Success of request 5 without a specific reply: empty body."),
        (8, ErrorReply { code: ErrorCode::NotAdmin as u16, message: "only group admins may remove members".into() }.into(), "Request 8 failed with NOT_ADMIN (42); the connection stays open."),
        (15, ErrorReply { code: ErrorCode::Unavailable as u16, message: "the node that owns this thread is down; retry later".into() }.into(), "Request 15 failed with UNAVAILABLE (72): a node of the cluster it needs is down; the connection stays open."),
        (0, ErrorReply { code: ErrorCode::HeartbeatTimeout as u16, message: "no frame for 90 s".into() }.into(), "Request id 0: the server is closing the connection because of HEARTBEAT_TIMEOUT (8)."),
        (1, Welcome { version: 1, max_frame: DEFAULT_MAX_FRAME_LEN, heartbeat_secs: 30, node: "n1".into() }.into(), "Answer to HELLO#1: version 1, max frame 65536, heartbeat 30 s, node \"n1\"."),
        (2, AuthOk { user: ALICE, device: 1, token: Bytes::copy_from_slice(&TOKEN), handle: "alice".into(), watermark: 1_700_000_000_000_000 }.into(), "Authenticated as user 17, device 1, with a 32-byte token and the sync watermark at login."),
        (13, ThreadInfo { thread: direct_thread() }.into(), "Direct thread 5 of users 17 and 42, with receipt cursors; the asker labelled it \"bob\"."),
        (6, ThreadInfo { thread: group_thread() }.into(), "Group thread 9 \"climbing\", user 17 is admin, muted by the asker."),
        (11, ThreadList {
            threads: vec![ThreadSummary {
                id: THREAD,
                kind: ThreadKind::Direct,
                name: String::new(),
                peer: BOB,
                member_count: 2,
                last_msg_id: MSG,
                unread: 1,
                muted: false,
                hidden: false,
                label: String::new(),
                last_message: Some(message(MSG, "hi")),
            }, ThreadSummary {
                id: GROUP,
                kind: ThreadKind::Group,
                name: "climbing".into(),
                peer: 0,
                member_count: 3,
                last_msg_id: 0,
                unread: 0,
                muted: true,
                hidden: false,
                label: String::new(),
                last_message: None,
            }],
            more: false,
        }.into(), "Two rows: a direct thread with its last message, and an empty group (last_message absent)."),
        (15, Sent { thread: THREAD, message: MSG, client_msg_id: 901 }.into(), "SEND#15 is durable as message MSG."),
        (17, Messages { thread: THREAD, messages: vec![message(MSG + 1, "how are you?"), message(MSG, "hi")], more: true, meta: vec![] }.into(), "Two messages, newest first (a BACKWARD page), more exist; none replies, was edited or has reactions."),
        (17, Messages {
            thread: THREAD,
            messages: vec![message(MSG + 1, "me too"), message(MSG, "hi!")],
            more: false,
            meta: vec![
                MessageMeta { id: MSG + 1, reply_to: MSG, edited_at: 0, reactions: vec![], mine: String::new() },
                MessageMeta { id: MSG, reply_to: 0, edited_at: MSG + 2, reactions: vec![ReactionCount { reaction: "👍".into(), count: 2 }, ReactionCount { reaction: "😂".into(), count: 1 }], mine: "👍".into() },
            ],
        }.into(), "A page with its meta: MSG+1 replies to MSG; MSG was edited at MSG+2 and has three reactions, one of them the caller's."),
        (24, SyncBatch {
            threads: vec![direct_thread()],
            messages: vec![message(MSG, "hi")],
            more: true,
            next_thread: THREAD,
            next_message: MSG,
            watermark: MSG + 10,
            deleted: vec![MessageRef { thread: THREAD, id: MSG - 5 }],
            meta: vec![MessageMeta { id: MSG, reply_to: MSG - 7, edited_at: 0, reactions: vec![], mine: String::new() }],
            vector: Tail(None),
        }.into(), "A sync page with one thread and one message, and a message of that thread the caller deleted for themselves on another device; more pages follow (ask with this watermark)."),
        (25, SyncBatch { threads: vec![], messages: vec![], more: false, next_thread: 0, next_message: 0, watermark: MSG + 10, deleted: vec![], meta: vec![], vector: Tail(None) }.into(), "The last (here empty) sync page of the same walk: the same watermark; store it."),
        (25, SyncBatch { threads: vec![], messages: vec![], more: false, next_thread: 0, next_message: 0, watermark: MSG - 40, deleted: vec![], meta: vec![], vector: Tail::some(BatchVector { watermarks: vec![MSG + 10, MSG - 40, MSG - 5], next_node: 0 }) }.into(), "The last page of a walk over a cluster of three nodes: every node's watermark (store them as the next since vector); the scalar is their minimum."),
        (23, ReadersList { thread: GROUP, message: MSG, delivered: vec![ALICE, BOB], read: vec![ALICE] }.into(), "Message MSG reached users 17 and 42; user 17 read it."),
        (29, Contacts { users: vec![UserInfo { id: BOB, handle: "bob".into() }, UserInfo { id: CAROL, handle: "carol".into() }] }.into(), "Two contacts."),
        (30, Users { users: vec![UserInfo { id: BOB, handle: "bob".into() }, UserInfo { id: CAROL, handle: "carol".into() }] }.into(), "The two users asked for."),
        (30, User { user: UserInfo { id: BOB, handle: "bob".into() } }.into(), "The user with handle \"bob\" is 42."),
        (32, PresenceList { entries: vec![Presence { user: BOB, online: true, last_seen: MSG }, Presence { user: CAROL, online: false, last_seen: MSG - 3_600_000_000 }] }.into(), "User 42 is online; user 50 was last seen an hour earlier."),
        (4, Pong { nonce: 7 }.into(), "Answer to PING#4 with its nonce."),
        (33, MediaUpload { upload: 3, chunk_max: 60_000, offset: 120_000 }.into(), "Upload id 3; chunks of at most 60000 bytes; the server has the first 120000 bytes already."),
        (35, MediaRef { media: Bytes::copy_from_slice(&MEDIA), total_len: 1_048_576 }.into(), "Upload committed: the 32-byte media id and its size."),
        (36, MediaData { media: Bytes::copy_from_slice(&MEDIA), total_len: 1_048_576, offset: 0, data: b(b"\xff\xd8\xff\xe0") }.into(), "The first bytes of a media object."),
        (37, Stats { entries: vec![Stat { name: "connections.current".into(), value: 1234 }, Stat { name: "messages.stored".into(), value: 5_000_000 }] }.into(), "Two server counters."),
        (0, MessagePush { message: message(MSG, "hi"), reply_to: 0 }.into(), "New text message \"hi\" from user 17 in thread 5."),
        (0, MessagePush { message: message(MSG + 1, "me too"), reply_to: MSG }.into(), "New text message that replies to message MSG of the same thread."),
        (0, MessagePush {
            message: system_message(SystemEvent { event: SystemEventKind::MemberAdded, actor: ALICE, subject: BOB, text: String::new(), users: vec![BOB, CAROL], body: Bytes::new(), reactions: vec![] }),
            reply_to: 0,
        }.into(), "A SYSTEM message: user 17 added users 42 and 50 to group 9 in one ADD_MEMBERS (subject = the first); its body is an encoded SystemEvent."),
        (0, MessagePush {
            message: Message { recalled: true, body: Bytes::new(), ..message(MSG, "") },
            reply_to: 0,
        }.into(), "A recalled message (tombstone): recalled = 1, empty body."),
        (0, MessagePush {
            message: system_message(SystemEvent { event: SystemEventKind::Edited, actor: ALICE, subject: MSG, text: String::new(), users: vec![], body: b(b"hi!"), reactions: vec![] }),
            reply_to: 0,
        }.into(), "A SYSTEM message EDITED: user 17 replaced the body of message MSG with \"hi!\"; the edit time is this message's id."),
        (0, MessagePush {
            message: system_message(SystemEvent { event: SystemEventKind::Reacted, actor: BOB, subject: MSG, text: "👍".into(), users: vec![], body: Bytes::new(), reactions: vec![ReactionCount { reaction: "👍".into(), count: 2 }] }),
            reply_to: 0,
        }.into(), "A SYSTEM message REACTED: user 42 reacted 👍 to message MSG, which now has two 👍."),
        (0, ReceiptPush { thread: THREAD, user: BOB, kind: ReceiptKind::Read, up_to: MSG }.into(), "User 42 read thread 5 up to MSG."),
        (0, PresencePush { presence: Presence { user: BOB, online: false, last_seen: MSG } }.into(), "User 42 went offline."),
        (0, TypingPush { thread: THREAD, user: BOB, active: true }.into(), "User 42 is typing in thread 5."),
        (0, Redirect { node: "n2".into(), addr: "10.0.0.2:7000".into(), key: Bytes::from_static(&[0x4b; 32]) }.into(), "The user lives on node n2: reconnect to 10.0.0.2:7000 and pin n2's key there. The server closes."),
        (0, Redirect { node: "n2".into(), addr: "10.0.0.2:7000".into(), key: Bytes::new() }.into(), "The same on a plaintext cluster: no key."),
    ]
}

/// Node-to-node frames (`courier_protocol::peer`), at least one per type.
fn peer_samples() -> Vec<(PeerFrame, &'static str)> {
    let origin = Origin {
        node: 0,
        shard: 1,
        slot: 77,
        gen: 3,
    };
    let mut push = BytesMut::new();
    encode(
        0,
        &MessagePush {
            message: message(MSG, "hi"),
            reply_to: 0,
        }
        .into(),
        &mut push,
    );
    let mut sent = BytesMut::new();
    encode(
        15,
        &Sent {
            thread: THREAD,
            message: MSG,
            client_msg_id: 901,
        }
        .into(),
        &mut sent,
    );
    let mut send = BytesMut::new();
    encode(
        15,
        &Send {
            thread: THREAD,
            client_msg_id: 901,
            kind: MessageKind::Text,
            body: Bytes::from_static(b"hi"),
            reply_to: 0,
        }
        .into(),
        &mut send,
    );
    let mut open = BytesMut::new();
    encode(16, &OpenDirect { peer: BOB }.into(), &mut open);
    let mut list = BytesMut::new();
    encode(
        0,
        &ListThreads {
            before_msg_id: 0,
            before_thread: 0,
            limit: 50,
        }
        .into(),
        &mut list,
    );
    let mut media_send = BytesMut::new();
    encode(
        16,
        &Send {
            thread: THREAD,
            client_msg_id: 2,
            kind: MessageKind::Media,
            body: Bytes::from_static(&[0xAB; 32]),
            reply_to: 0,
        }
        .into(),
        &mut media_send,
    );
    let mut media_get = BytesMut::new();
    encode(
        0,
        &MediaGet {
            media: Bytes::from_static(&[0xAB; 32]),
            offset: 0,
            max_len: 65_536,
            thread: THREAD,
        }
        .into(),
        &mut media_get,
    );
    let mut listed = BytesMut::new();
    encode(
        0,
        &ThreadList {
            threads: vec![],
            more: false,
        }
        .into(),
        &mut listed,
    );
    vec![
        (PeerHello { version: PEER_VERSION, node: "n1".into(), membership: 0x0123_4567_89ab_cdef }.into(), "Node n1 dials: node protocol version 1 and the hash of its member list."),
        (PeerWelcome { version: PEER_VERSION, node: "n2".into(), membership: 0x0123_4567_89ab_cdef }.into(), "Node n2 accepts: same version, same member list hash."),
        (PeerRefuse { reason: RefuseReason::Membership, message: "member lists differ: start every node with the same --peer list".into() }.into(), "Node n2 refuses: the dialer's member list hash differs (reason 3)."),
        (PeerPing { nonce: 7 }.into(), "Link heartbeat from the dialer, nonce 7."),
        (PeerPong { nonce: 7 }.into(), "The acceptor's answer to PEER_PING 7."),
        (Forward { lane: THREAD, origin: origin.clone(), request_id: 15, user: ALICE, device: 1, frame: send.freeze(), checked: UsersChecked::No, handles: Tail(None) }.into(), "SEND#15 of user 17 (device 1, connection shard 1 slot 77 gen 3 on node 0) forwarded to the owner of thread 5, on lane 5; frame is the client's SEND, encoded; it names no users to check."),
        (Forward { lane: THREAD, origin: origin.clone(), request_id: 16, user: ALICE, device: 1, frame: media_send.freeze(), checked: UsersChecked::MediaHeld, handles: Tail(None) }.into(), "SEND#16 of kind MEDIA (body: media id AB…AB) forwarded by the sender's home, which holds the media's bytes and found that user 17 may read it (checked 3, MEDIA_HELD): the owner records the origin's node as the holder."),
        (Forward { lane: ALICE.min(BOB) ^ ALICE.max(BOB).rotate_left(32), origin: origin.clone(), request_id: 16, user: ALICE, device: 1, frame: open.freeze(), checked: UsersChecked::AllExist, handles: Tail::some(vec![UserInfo { id: ALICE, handle: "alice".into() }, UserInfo { id: BOB, handle: "bob".into() }]) }.into(), "OPEN_DIRECT#16 of user 17 with user 42, forwarded to the owner of their pair (on the pair's lane); the origin checked that user 42 exists and sends both handles, which the owner stores with a direct thread it creates."),
        (ForwardReply { origin: origin.clone(), frame: sent.freeze() }.into(), "The owner's answer for that connection: SENT#15, encoded."),
        (PushBatch { users: vec![BOB, CAROL], except: Some(origin.clone()), frame: push.clone().freeze(), notify: Tail::default() }.into(), "MESSAGE_PUSH for users 42 and 50 homed on the receiving node, not to the sender's own connection; the push is encoded once."),
        (PushBatch { users: vec![BOB, CAROL], except: Some(origin), frame: push.freeze(), notify: Tail::some(vec![CAROL]) }.into(), "The same push; user 50 has not muted the thread, so the receiving node (50's home) queues a push notification for 50 if no device of 50 is online there."),
        (PeerRead { id: 9, user: ALICE, device: 1, frame: list.freeze() }.into(), "Read 9 from user 17's home: user 17's part of LIST_THREADS (first page, 50 rows) on the receiving node."),
        (PeerRead { id: 10, user: CAROL, device: 1, frame: media_get.freeze() }.into(), "Read 10 from the owner of thread 5, which checked that user 50 may read media AB…AB: the first 64 KiB of it, from the node holding its bytes (answered MEDIA_DATA without a second check)."),
        (PeerReadReply { id: 9, frame: listed.freeze() }.into(), "The answer to read 9: an empty THREAD_LIST (user 17 is in no thread this node owns)."),
        (PresenceWatch { reset: true, users: vec![BOB, CAROL] }.into(), "The sender's whole watch set (after its link came up): its connections subscribe to users 42 and 50, homed on the receiving node."),
        (PresenceUnwatch { users: vec![CAROL] }.into(), "No connection of the sender subscribes to user 50 any more."),
        (PresenceChanges { epoch: 1_700_000_000_000_000, changes: vec![PresenceChange { seq: 12, presence: Presence { user: BOB, online: true, last_seen: 1_700_000_123_000_000 } }] }.into(), "User 42 (homed on the sender, which started at epoch 1700000000000000) came online: change 12 of that epoch."),
    ]
}

/// Encodings that decode but are not what an encoder writes.
fn decode_only() -> Vec<(String, u32, Frame, &'static str)> {
    vec![
        (
            // PING#4{nonce 7} with three bytes a later version might append.
            "0000001007000000040000000000000007aabbcc".into(),
            4,
            Ping { nonce: 7 }.into(),
            "PING with 3 trailing body bytes: a decoder ignores bytes after the known fields.",
        ),
        (
            "000000060500000003ff".into(),
            3,
            Logout {}.into(),
            "LOGOUT with a 1-byte body: trailing bytes after an empty body are ignored too.",
        ),
    ]
}

/// Encodings a decoder must reject, with the error (and so the error code) it must give.
fn invalid() -> Vec<(&'static str, Error, &'static str)> {
    vec![
        (
            "80000000",
            Error::FrameTooLarge {
                len: 0x8000_0000,
                max: DEFAULT_MAX_FRAME_LEN,
            },
            "len = 2 GiB: rejected from the 4-byte prefix alone (FRAME_TOO_LARGE).",
        ),
        (
            "00010001",
            Error::FrameTooLarge {
                len: 65_537,
                max: DEFAULT_MAX_FRAME_LEN,
            },
            "len = 65537, one over the default limit (FRAME_TOO_LARGE).",
        ),
        (
            "00000004",
            Error::FrameTooShort { len: 4 },
            "len = 4 cannot hold type and request id (MALFORMED).",
        ),
        (
            "000000057f00000001",
            Error::UnknownFrameType(0x7f),
            "Unassigned type code 0x7f (UNKNOWN_FRAME).",
        ),
        (
            "00000009070000000100000000",
            Error::Truncated {
                field: "Ping.nonce",
            },
            "PING whose body ends inside the u64 nonce (MALFORMED).",
        ),
        (
            "0000000e2700000001000000000000000502",
            Error::InvalidValue {
                field: "Typing.active",
                value: 2,
            },
            "TYPING with bool byte 2 (MALFORMED).",
        ),
        (
            "0000000933000000010100ffff",
            Error::Truncated {
                field: "LookupUser.handle",
            },
            "LOOKUP_USER whose str length 0x0100 points past the body (MALFORMED).",
        ),
        (
            "00000008330000000100018f",
            Error::InvalidUtf8 {
                field: "LookupUser.handle",
            },
            "LOOKUP_USER whose handle is the lone byte 0x8f (MALFORMED).",
        ),
        (
            "0000000e2200000001000000000000000503",
            Error::InvalidValue {
                field: "Receipt.kind",
                value: 3,
            },
            "RECEIPT with unknown ReceiptKind 3 (MALFORMED).",
        ),
    ]
}

fn hex_of(request_id: u32, frame: &Frame) -> String {
    let mut buf = BytesMut::new();
    encode(request_id, frame, &mut buf);
    hex::encode(&buf)
}

fn peer_hex_of(frame: &PeerFrame) -> String {
    let mut buf = BytesMut::new();
    encode_peer(frame, &mut buf);
    hex::encode(&buf)
}

fn decode_all(hex: &str) -> Result<Option<Envelope>, Error> {
    let mut buf = BytesMut::from(&hex::decode(hex).expect("valid hex")[..]);
    let out = Decoder::default().decode(&mut buf);
    if let Ok(Some(_)) = out {
        assert!(buf.is_empty(), "{hex}: bytes left after one frame");
    }
    out
}

fn vectors_json() -> Value {
    let frames: Vec<Value> = samples()
        .iter()
        .map(|(request_id, frame, description)| {
            json!({
                "code": format!("0x{:02x}", frame.code()),
                "name": frame.name(),
                "request_id": request_id,
                "description": description,
                "debug": format!("{frame:?}"),
                "hex": hex_of(*request_id, frame),
            })
        })
        .collect();
    let decode_only: Vec<Value> = decode_only()
        .iter()
        .map(|(hex, request_id, frame, description)| {
            json!({
                "name": frame.name(),
                "request_id": request_id,
                "description": description,
                "debug": format!("{frame:?}"),
                "hex": hex,
            })
        })
        .collect();
    let invalid: Vec<Value> = invalid()
        .iter()
        .map(|(hex, error, description)| {
            json!({
                "description": description,
                "error": error.to_string(),
                "error_code": error.code().name(),
                "hex": hex,
            })
        })
        .collect();
    let peer_frames: Vec<Value> = peer_samples()
        .iter()
        .map(|(frame, description)| {
            json!({
                "code": format!("0x{:02x}", frame.code()),
                "name": frame.name(),
                "description": description,
                "debug": format!("{frame:?}"),
                "hex": peer_hex_of(frame),
            })
        })
        .collect();
    json!({
        "protocol_version": VERSION,
        "about": "Courier protocol v1 test vectors, generated by protocol/tests/vectors.rs. \
                  `frames`: encode(request_id, frame) must equal hex, and hex must decode to the \
                  frame. `decode_only`: hex decodes to the frame but is not canonical. `invalid`: \
                  a decoder with the default 65536-byte limit must reject hex with error_code. \
                  `peer_frames`: node-to-node frames (PROTOCOL.md section 13), encoded with \
                  encode_peer (the 4-byte field after the type is 0). \
                  MSG = 1700000000000001.",
        "frames": frames,
        "decode_only": decode_only,
        "invalid": invalid,
        "peer_frames": peer_frames,
    })
}

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors.json")
}

#[test]
fn vectors_file_matches_codec() {
    let generated = vectors_json();
    let path = vectors_path();
    if std::env::var_os("COURIER_WRITE_VECTORS").is_some_and(|v| v == "1") {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path)
        .expect("protocol/vectors.json is missing: run with COURIER_WRITE_VECTORS=1");
    let on_disk: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        on_disk, generated,
        "protocol/vectors.json is stale: rerun with COURIER_WRITE_VECTORS=1 and review the diff"
    );
}

#[test]
fn every_sample_encodes_to_its_hex_and_decodes_back() {
    for (request_id, frame, _) in samples() {
        let hex = hex_of(request_id, &frame);
        let env = decode_all(&hex).unwrap().expect("one whole frame");
        assert_eq!(env, Envelope { request_id, frame }, "{hex}");
    }
}

#[test]
fn every_frame_code_has_a_vector() {
    let samples = samples();
    for (code, name) in Frame::CODES {
        assert!(
            samples.iter().any(|(_, f, _)| f.code() == *code),
            "no vector for frame 0x{code:02x} {name}"
        );
    }
}

#[test]
fn pushes_use_request_id_zero_and_requests_do_not() {
    for (request_id, frame, _) in samples() {
        match frame.code() {
            0x01..=0x7f => assert_ne!(request_id, 0, "{}", frame.name()),
            0xc0..=0xff => assert_eq!(request_id, 0, "{}", frame.name()),
            _ => {}
        }
    }
}

#[test]
fn decode_only_vectors_decode() {
    for (hex, request_id, frame, _) in decode_only() {
        assert_eq!(
            decode_all(&hex),
            Ok(Some(Envelope { request_id, frame })),
            "{hex}"
        );
    }
}

#[test]
fn invalid_vectors_are_rejected() {
    for (hex, error, description) in invalid() {
        assert_eq!(decode_all(hex), Err(error), "{hex}: {description}");
    }
}

#[test]
fn hello_is_the_worked_example() {
    let hello = samples().into_iter().next().unwrap();
    assert_eq!(
        hex_of(hello.0, &hello.1),
        "0000001001000000010001000763 6c692f302e31".replace(' ', "")
    );
    let welcome = Welcome {
        version: 1,
        max_frame: 65_536,
        heartbeat_secs: 30,
        node: "n1".into(),
    };
    assert_eq!(
        hex_of(1, &welcome.into()),
        "0000001182000000010001000100 00001e00026e31".replace(' ', "")
    );
}

#[test]
fn every_peer_sample_encodes_to_its_hex_and_decodes_back() {
    for (frame, _) in peer_samples() {
        let hex = peer_hex_of(&frame);
        let mut buf = BytesMut::from(&hex::decode(&hex).unwrap()[..]);
        assert_eq!(decode_peer(&mut buf), Ok(Some(frame)), "{hex}");
        assert!(buf.is_empty());
    }
}

#[test]
fn every_peer_frame_code_has_a_vector() {
    let samples = peer_samples();
    for (code, name) in PeerFrame::CODES {
        assert!(
            samples.iter().any(|(f, _)| f.code() == *code),
            "no vector for node frame 0x{code:02x} {name}"
        );
    }
}
