//! Push notifications over real TCP: registrations and their limits.

mod util;

use courier_protocol::{ErrorCode, Frame, RegisterPush, UnregisterPush};
use util::{error_code, Server, TestConn};

fn register_push(c: &mut TestConn, pushkey: &str) -> Frame {
    c.request(RegisterPush {
        app_id: "com.example.chat".into(),
        pushkey: pushkey.into(),
        platform: "apns".into(),
        lang: "en".into(),
        data: String::new(),
    })
}

fn registered(c: &mut TestConn, pushkey: &str) {
    match register_push(c, pushkey) {
        Frame::Done(_) => {}
        other => panic!("REGISTER_PUSH: {other:?}"),
    }
}

#[test]
fn registrations_are_bounded_replaced_and_checked() {
    let server = Server::start();
    let (mut bob, _) = server.user("bob");
    for i in 0..10 {
        registered(&mut bob, &format!("key-{i}"));
    }
    // The same key again replaces it: still 10, so it is accepted.
    registered(&mut bob, "key-3");
    let refused = register_push(&mut bob, "key-10");
    assert_eq!(error_code(&refused), ErrorCode::TooManyPushers);
    match refused {
        Frame::ErrorReply(e) => assert!(e.message.contains("UNREGISTER_PUSH"), "{}", e.message),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        bob.request(UnregisterPush {
            app_id: "com.example.chat".into(),
            pushkey: "key-3".into(),
        }),
        Frame::Done(_)
    ));
    registered(&mut bob, "key-10");

    // 20 per user, all devices together: a second device gets 10 more, not 11.
    let mut phone = server.connect();
    phone.hello();
    phone.login("bob", util::PASSWORD, "phone");
    for i in 0..10 {
        registered(&mut phone, &format!("phone-{i}"));
    }
    let mut tablet = server.connect();
    tablet.hello();
    tablet.login("bob", util::PASSWORD, "tablet");
    assert_eq!(
        error_code(&register_push(&mut tablet, "tablet-0")),
        ErrorCode::TooManyPushers
    );

    let bad = tablet.request(RegisterPush {
        app_id: "com.example.chat".into(),
        pushkey: "k".into(),
        platform: "apns".into(),
        lang: String::new(),
        data: "[1, 2]".into(),
    });
    assert_eq!(error_code(&bad), ErrorCode::InvalidArgument);
    let empty = tablet.request(RegisterPush {
        app_id: String::new(),
        pushkey: "k".into(),
        platform: "apns".into(),
        lang: String::new(),
        data: String::new(),
    });
    assert_eq!(error_code(&empty), ErrorCode::InvalidArgument);
}
