//! A TCP proxy a test owns, between an agent and PostgreSQL: `cut` makes
//! it a black hole (connections stay open, nothing gets through, as in a
//! network partition: no reset, no answer), `heal` drops the connections
//! it held and forwards again. The shared server is never stopped.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Every socket it holds, both sides, to drop them on `heal`.
    sockets: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards 127.0.0.1:(a free port) to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (cut, sockets, stop) = (cut.clone(), sockets.clone(), stop.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    sockets.lock().unwrap().push(client.try_clone().unwrap());
                    if cut.load(Ordering::SeqCst) {
                        // Accepted, never answered.
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    sockets.lock().unwrap().push(server.try_clone().unwrap());
                    pump(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        &cut,
                    );
                    pump(server, client, &cut);
                }
            });
        }
        Proxy {
            addr,
            cut,
            sockets,
            stop,
        }
    }

    /// From now on nothing gets through, in either direction.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Drops every connection it held (their bytes were lost) and forwards
    /// new ones again.
    pub fn heal(&self) {
        for socket in self.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.heal();
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` until either closes; while cut, what arrives is
/// swallowed.
fn pump(mut from: TcpStream, mut to: TcpStream, cut: &Arc<AtomicBool>) {
    let cut = cut.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if cut.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
}
