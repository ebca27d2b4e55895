//! A TCP relay between a client and the server that a test can cut, as a network failure would.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// Cut with [`Proxy::cut`]; while [`Proxy::refuse`] is on, new connections are dropped.
#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    refusing: Arc<Mutex<bool>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            conns: Arc::default(),
            refusing: Arc::default(),
        };
        let p = proxy.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if *p.refusing.lock().unwrap() {
                    continue; // dropped: the client sees the connection close
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                p.conns
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        proxy
    }

    pub fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn refuse(&self, on: bool) {
        *self.refusing.lock().unwrap() = on;
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
