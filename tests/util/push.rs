//! A push gateway for the push tests: a local HTTP receiver (tiny_http) that hands each
//! notification to the test, which answers it (or holds it); and push registration.

use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use courier_protocol::{Frame, RegisterPush};
use serde_json::{json, Value};

use super::TestConn;

/// How long a test waits for the notifier's next request.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// A push gateway on an ephemeral loopback port: every request it receives is handed to the
/// test, which answers it (or holds it).
pub struct Gateway {
    pub url: String,
    pub requests: Receiver<tiny_http::Request>,
    _server: Arc<tiny_http::Server>,
}

/// One notification the gateway received: the request (to answer) and its JSON body.
pub struct Post {
    request: tiny_http::Request,
    pub body: Value,
    pub raw: String,
}

impl Gateway {
    pub fn start() -> Gateway {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the gateway"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let (tx, requests) = channel();
        let incoming = server.clone();
        std::thread::spawn(move || {
            for request in incoming.incoming_requests() {
                if tx.send(request).is_err() {
                    return;
                }
            }
        });
        Gateway {
            url: format!("http://127.0.0.1:{port}"),
            requests,
            _server: server,
        }
    }

    /// The next notification, checked to be a Matrix `notify` POST.
    pub fn next(&self) -> Post {
        let mut request = self
            .requests
            .recv_timeout(POST_TIMEOUT)
            .expect("the notifier posts within 10 s");
        assert_eq!(request.method(), &tiny_http::Method::Post);
        assert_eq!(request.url(), "/_matrix/push/v1/notify");
        let mut raw = String::new();
        request
            .as_reader()
            .read_to_string(&mut raw)
            .expect("read the body");
        let body = serde_json::from_str(&raw).expect("the body is JSON");
        Post { request, body, raw }
    }
}

impl Post {
    pub fn answer(self, status: u16, body: Value) {
        let response = tiny_http::Response::from_string(body.to_string())
            .with_status_code(status)
            .with_header(
                "Content-Type: application/json"
                    .parse::<tiny_http::Header>()
                    .expect("a header"),
            );
        self.request.respond(response).expect("answer the notifier");
    }

    pub fn ok(self) {
        self.answer(200, json!({ "rejected": [] }));
    }

    pub fn n(&self) -> &Value {
        &self.body["notification"]
    }

    pub fn event(&self) -> u64 {
        self.n()["event_id"]
            .as_str()
            .expect("event_id")
            .parse()
            .expect("a decimal message id")
    }

    pub fn room(&self) -> u64 {
        self.n()["room_id"]
            .as_str()
            .expect("room_id")
            .parse()
            .expect("a decimal thread id")
    }

    pub fn unread(&self) -> u64 {
        self.n()["counts"]["unread"]
            .as_u64()
            .expect("counts.unread")
    }

    pub fn pushkeys(&self) -> Vec<&str> {
        self.n()["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| d["pushkey"].as_str().expect("pushkey"))
            .collect()
    }
}

pub fn register_push(c: &mut TestConn, pushkey: &str) -> Frame {
    c.request(RegisterPush {
        app_id: "com.example.chat".into(),
        pushkey: pushkey.into(),
        platform: "apns".into(),
        lang: "en".into(),
        data: String::new(),
    })
}

pub fn registered(c: &mut TestConn, pushkey: &str) {
    match register_push(c, pushkey) {
        Frame::Done(_) => {}
        other => panic!("REGISTER_PUSH: {other:?}"),
    }
}
