//! A client and a server session joined in memory, driven by a fuzzer-chosen
//! script: writes, partial deliveries (the client through `handle_input` or
//! `handle_input_in_place` with fuzzer-sized buffers), reads, timers, time
//! steps, transport cuts and reconnects (RESUME), shutdown and close, and
//! fuzzer bytes injected into either direction of the transport.
//!
//! Nothing may panic. While no bytes were injected, each side must have
//! received exactly a prefix of what the other side's application wrote
//! (the resume protocol may delay bytes, never lose, reorder or invent them).
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use namesocket::engine::{Config, KeyPair, Session};
use namesocket::wire::{FirstMessage, accept_first};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Where the server end of the current transport stands.
enum ServerEnd {
    /// Gathering the first message of a fresh transport.
    Fresh(Vec<u8>),
    /// Attached to the server session.
    Attached,
    /// Refused or no transport: bytes go nowhere.
    Gone,
}

struct Harness {
    now: Instant,
    rng: StdRng,
    client: Session,
    server: Option<Session>,
    server_keys: Arc<KeyPair>,
    config: Config,
    end: ServerEnd,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    c_sent: Vec<u8>,
    s_sent: Vec<u8>,
    c_got: Vec<u8>,
    s_got: Vec<u8>,
    injected: bool,
}

impl Harness {
    fn new() -> Option<Harness> {
        let mut rng = StdRng::seed_from_u64(7);
        let config = Config {
            send_buffer_limit: 8 << 10,
            ack_every_bytes: 1 << 10,
            max_frame_payload: 700,
            ..Config::default()
        };
        let client = Session::client(config.clone(), Arc::new(KeyPair::generate(&mut rng))).ok()?;
        let server_keys = Arc::new(KeyPair::generate(&mut rng));
        let mut h = Harness {
            now: Instant::now(),
            rng,
            client,
            server: None,
            server_keys,
            config,
            end: ServerEnd::Gone,
            c2s: Vec::new(),
            s2c: Vec::new(),
            c_sent: Vec::new(),
            s_sent: Vec::new(),
            c_got: Vec::new(),
            s_got: Vec::new(),
            injected: false,
        };
        h.reconnect();
        Some(h)
    }

    fn reconnect(&mut self) {
        self.c2s.clear();
        self.s2c.clear();
        if self.client.transport_up(self.now, &mut self.rng).is_ok() {
            self.end = ServerEnd::Fresh(Vec::new());
        } else {
            self.end = ServerEnd::Gone;
        }
    }

    fn cut(&mut self) {
        self.c2s.clear();
        self.s2c.clear();
        self.client.transport_down(self.now);
        if matches!(self.end, ServerEnd::Attached)
            && let Some(s) = self.server.as_mut()
        {
            s.transport_down(self.now);
        }
        self.end = ServerEnd::Gone;
    }

    fn transmit(&mut self) {
        while let Some(t) = self.client.poll_transmit(self.now) {
            let n = t.len();
            t.copy_to(&mut self.c2s);
            self.client.advance(n);
        }
        if matches!(self.end, ServerEnd::Attached)
            && let Some(s) = self.server.as_mut()
        {
            while let Some(t) = s.poll_transmit(self.now) {
                let n = t.len();
                t.copy_to(&mut self.s2c);
                s.advance(n);
            }
        }
    }

    fn deliver_to_server(&mut self, n: usize) {
        let n = n.min(self.c2s.len());
        let chunk: Vec<u8> = self.c2s.drain(..n).collect();
        match &mut self.end {
            ServerEnd::Gone => {}
            ServerEnd::Attached => {
                if let Some(s) = self.server.as_mut() {
                    let _ = s.handle_input(self.now, &chunk);
                }
            }
            ServerEnd::Fresh(buf) => {
                buf.extend_from_slice(&chunk);
                let first = std::mem::take(buf);
                match accept_first(&first) {
                    Ok(None) => self.end = ServerEnd::Fresh(first),
                    Ok(Some((FirstMessage::New(new), used))) => {
                        match Session::accept_new(
                            self.now,
                            self.config.clone(),
                            Arc::clone(&self.server_keys),
                            &new,
                            &mut self.rng,
                        ) {
                            Ok(s) => {
                                // A fresh server-side session (the client
                                // restarts one whose NEW_ACK it never got):
                                // what the old one wrote is not this
                                // session's stream.
                                self.server = Some(s);
                                self.s_sent.clear();
                                self.s_got.clear();
                                self.end = ServerEnd::Attached;
                                if let Some(s) = self.server.as_mut() {
                                    let _ = s.handle_input(self.now, &first[used..]);
                                }
                            }
                            Err(_) => self.end = ServerEnd::Gone,
                        }
                    }
                    Ok(Some((FirstMessage::Resume(r), used))) => {
                        let attached = self
                            .server
                            .as_mut()
                            .is_some_and(|s| s.attach_resume(self.now, &r, &mut self.rng).is_ok());
                        if attached {
                            self.end = ServerEnd::Attached;
                            if let Some(s) = self.server.as_mut() {
                                let _ = s.handle_input(self.now, &first[used..]);
                            }
                        } else {
                            self.end = ServerEnd::Gone;
                        }
                    }
                    // A version 1 peer or garbage: the driver resets it.
                    Ok(Some((FirstMessage::V1(_), _))) | Err(_) => self.end = ServerEnd::Gone,
                }
            }
        }
    }

    /// Delivers up to `n` bytes to the client, through the in-place path
    /// with a buffer of `buf_len` bytes when `in_place`.
    fn deliver_to_client(&mut self, n: usize, in_place: bool, buf_len: usize) {
        let n = n.min(self.s2c.len());
        if in_place {
            let mut buf = vec![0u8; buf_len.max(1)];
            let n = n.min(buf.len());
            buf[..n].copy_from_slice(&self.s2c[..n]);
            self.s2c.drain(..n);
            let (got, _) = self.client.handle_input_in_place(self.now, &mut buf, n);
            self.c_got.extend_from_slice(&buf[..got.min(buf.len())]);
        } else {
            let chunk: Vec<u8> = self.s2c.drain(..n).collect();
            let _ = self.client.handle_input(self.now, &chunk);
        }
    }

    fn read(&mut self, len: usize) {
        let mut buf = vec![0u8; len.max(1)];
        let n = self.client.read(&mut buf);
        self.c_got.extend_from_slice(&buf[..n]);
        if let Some(s) = self.server.as_mut() {
            let n = s.read(&mut buf);
            self.s_got.extend_from_slice(&buf[..n]);
        }
    }

    fn write(&mut self, client: bool, len: usize, fill: u8) {
        let start = if client {
            self.c_sent.len()
        } else {
            self.s_sent.len()
        };
        // A pattern of the stream position (period 2^16 bytes, longer than
        // any buffer here), so a duplicated, lost or reordered range fails
        // the prefix check.
        let data: Vec<u8> = (0..len)
            .map(|i| {
                let pos = start.wrapping_add(i);
                ((pos >> 8) as u8).wrapping_mul(31) ^ (pos as u8) ^ fill
            })
            .collect();
        if client {
            if let Ok(n) = self.client.write(&data) {
                self.c_sent.extend_from_slice(&data[..n]);
            }
        } else if let Some(s) = self.server.as_mut()
            && let Ok(n) = s.write(&data)
        {
            self.s_sent.extend_from_slice(&data[..n]);
        }
    }

    fn timers(&mut self) {
        self.client.handle_timeout(self.now);
        if let Some(s) = self.server.as_mut() {
            s.handle_timeout(self.now);
        }
        while self.client.poll_event().is_some() {}
        if let Some(s) = self.server.as_mut() {
            while s.poll_event().is_some() {}
        }
    }

    fn check(&self) {
        if self.injected {
            return;
        }
        assert!(
            self.c_sent.starts_with(&self.s_got),
            "server received bytes the client never wrote"
        );
        assert!(
            self.s_sent.starts_with(&self.c_got),
            "client received bytes the server never wrote"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(mut h) = Harness::new() else {
        return;
    };
    let mut ops = data;
    while let [op, arg, rest @ ..] = ops {
        ops = rest;
        let arg = usize::from(*arg);
        match op % 14 {
            0 => h.write(true, arg * 16, *op),
            1 => h.write(false, arg * 16, *op),
            2 => h.transmit(),
            3 => h.deliver_to_server(arg * 8),
            4 => h.deliver_to_client(arg * 8, false, 0),
            5 => h.deliver_to_client(arg * 8, true, arg * 24),
            6 => h.read(arg * 8),
            7 => {
                h.now += Duration::from_millis(arg as u64 * 4);
                h.timers();
            }
            8 => h.cut(),
            9 => h.reconnect(),
            10 => match arg % 4 {
                0 => h.client.shutdown_write(),
                1 => h.client.close(),
                2 => {
                    if let Some(s) = h.server.as_mut() {
                        s.shutdown_write();
                    }
                }
                _ => {
                    if let Some(s) = h.server.as_mut() {
                        s.close();
                    }
                }
            },
            // Inject the next `arg % 64` script bytes into a direction.
            11 | 12 => {
                let n = (arg % 64).min(ops.len());
                let (bytes, rest) = ops.split_at(n);
                ops = rest;
                h.injected = true;
                if op % 14 == 11 {
                    h.c2s.extend_from_slice(bytes);
                } else {
                    h.s2c.extend_from_slice(bytes);
                }
            }
            _ => {
                // One full round.
                h.transmit();
                h.deliver_to_server(usize::MAX);
                h.deliver_to_client(usize::MAX, arg % 2 == 0, arg * 64);
                h.read(1 << 12);
                h.timers();
            }
        }
        h.check();
    }
    h.check();
});
