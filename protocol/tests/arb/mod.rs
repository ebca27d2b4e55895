//! Proptest strategies for every field type, shared struct and frame of the protocol.
//!
//! `arb_structs!` turns a struct's field names into a strategy: each field's strategy comes from
//! its type through [`Arb`], so the lists below only name fields, and a field added to a frame
//! without being listed here fails to compile.

#![allow(dead_code)] // each test binary uses a different part of this module

use bytes::Bytes;
use courier_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

/// A type with a default strategy for these tests.
pub trait Arb: Sized + std::fmt::Debug {
    fn arb() -> BoxedStrategy<Self>;
}

macro_rules! arb_any {
    ($($t:ty),*) => {$(
        impl Arb for $t {
            fn arb() -> BoxedStrategy<Self> {
                any::<$t>().boxed()
            }
        }
    )*};
}
arb_any!(u8, u16, u32, u64, bool);

impl Arb for String {
    fn arb() -> BoxedStrategy<Self> {
        // Any printable Unicode, so multi-byte characters are covered.
        "\\PC{0,12}".boxed()
    }
}

impl Arb for Bytes {
    fn arb() -> BoxedStrategy<Self> {
        vec(any::<u8>(), 0..40).prop_map(Bytes::from).boxed()
    }
}

impl<T: Arb + 'static> Arb for Vec<T> {
    fn arb() -> BoxedStrategy<Self> {
        vec(T::arb(), 0..4).boxed()
    }
}

impl<T: Arb + 'static> Arb for Option<T> {
    fn arb() -> BoxedStrategy<Self> {
        proptest::option::of(T::arb()).boxed()
    }
}

impl<T: Arb + 'static> Arb for Tail<T> {
    fn arb() -> BoxedStrategy<Self> {
        proptest::option::of(T::arb()).prop_map(Tail).boxed()
    }
}

macro_rules! arb_enums {
    ($($t:ident),*) => {$(
        impl Arb for $t {
            fn arb() -> BoxedStrategy<Self> {
                proptest::sample::select($t::ALL).boxed()
            }
        }
    )*};
}
arb_enums!(
    MessageKind,
    ThreadKind,
    Role,
    ReceiptKind,
    Direction,
    SystemEventKind
);

/// The strategy of a field's type; the name only drives the macro repetition.
fn field<T: Arb>(_name: &str) -> BoxedStrategy<T> {
    T::arb()
}

macro_rules! arb_structs {
    ($($name:ident { $($field:ident),* })*) => {$( arb_struct!($name { $($field),* }); )*};
}

macro_rules! arb_struct {
    ($name:ident {}) => {
        impl Arb for $name {
            fn arb() -> BoxedStrategy<Self> {
                Just($name {}).boxed()
            }
        }
    };
    ($name:ident { $($field:ident),+ }) => {
        impl Arb for $name {
            #[allow(unused_parens)]
            fn arb() -> BoxedStrategy<Self> {
                ($(field(stringify!($field))),+)
                    .prop_map(|($($field),+)| $name { $($field),+ })
                    .boxed()
            }
        }
    };
}

arb_structs! {
    SystemEvent { event, actor, subject, text, users, body, reactions }
    ReactionCount { reaction, count }
    MessageMeta { id, reply_to, edited_at, reactions, mine }
    Message { thread, id, sender, client_msg_id, kind, recalled, body }
    Member { user, role, delivered, read }
    Thread { id, kind, name, members, last_msg_id, muted, hidden, label }
    ThreadSummary { id, kind, name, peer, member_count, last_msg_id, unread, muted, hidden, label, last_message }
    UserInfo { id, handle }
    Presence { user, online, last_seen }
    Stat { name, value }
    MessageRef { thread, id }
    SyncVector { since, watermarks, after_node }
    BatchVector { watermarks, next_node }
}

/// Implements [`Arb`] for every frame body and lists a `Frame` strategy per frame type.
macro_rules! arb_frames {
    ($($name:ident { $($field:ident),* })*) => {
        arb_structs! { $($name { $($field),* })* }

        /// One strategy per frame type, named as in `Frame::CODES`.
        pub fn frame_strategies() -> Vec<(&'static str, BoxedStrategy<Frame>)> {
            vec![$((stringify!($name), $name::arb().prop_map(Frame::from).boxed())),*]
        }
    };
}

arb_frames! {
    Hello { version, client }
    Register { handle, password, device }
    Login { handle, password, device }
    Resume { token }
    Logout {}
    LogoutAll {}
    Ping { nonce }
    OpenDirect { peer }
    CreateGroup { name, members }
    AddMembers { thread, members }
    RemoveMember { thread, user }
    LeaveGroup { thread }
    RenameGroup { thread, name }
    ListThreads { before_msg_id, before_thread, limit }
    GetThread { thread }
    SetThreadState { thread, muted, hidden, label }
    Send { thread, client_msg_id, kind, body, reply_to }
    History { thread, anchor, direction, limit }
    Receipt { thread, kind, up_to }
    Recall { thread, message }
    DeleteForMe { thread, message }
    Readers { thread, message }
    Sync { since, after_thread, after_message, limit, watermark, vector }
    Typing { thread, active }
    Edit { thread, message, body }
    React { thread, message, reaction }
    ContactAdd { user }
    ContactRemove { user }
    ContactList {}
    LookupUser { handle }
    PresenceSubscribe { users }
    PresenceQuery { users }
    GetUsers { users }
    MediaBegin { total_len, mime, hash }
    MediaChunk { upload, offset, data }
    MediaCommit { upload }
    MediaGet { media, offset, max_len, thread }
    AdminStats {}
    RegisterPush { app_id, pushkey, platform, lang, data }
    UnregisterPush { app_id, pushkey }
    Done {}
    ErrorReply { code, message }
    Welcome { version, max_frame, heartbeat_secs, node }
    AuthOk { user, device, token, handle, watermark }
    ThreadInfo { thread }
    ThreadList { threads, more }
    Sent { thread, message, client_msg_id }
    Messages { thread, messages, more, meta }
    SyncBatch { threads, messages, more, next_thread, next_message, watermark, deleted, meta, vector }
    ReadersList { thread, message, delivered, read }
    Contacts { users }
    User { user }
    PresenceList { entries }
    Pong { nonce }
    MediaUpload { upload, chunk_max, offset }
    MediaRef { media, total_len }
    MediaData { media, total_len, offset, data }
    Stats { entries }
    Users { users }
    MessagePush { message, reply_to }
    ReceiptPush { thread, user, kind, up_to }
    PresencePush { presence }
    TypingPush { thread, user, active }
    Redirect { node, addr, key }
}

/// A frame of any type.
pub fn any_frame() -> impl Strategy<Value = Frame> {
    Union::new(frame_strategies().into_iter().map(|(_, s)| s))
}

/// A frame of any type with any request id.
pub fn any_envelope() -> impl Strategy<Value = Envelope> {
    (any::<u32>(), any_frame()).prop_map(|(request_id, frame)| Envelope { request_id, frame })
}
