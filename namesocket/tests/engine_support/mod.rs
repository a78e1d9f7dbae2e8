//! Deterministic in-memory harness: a client and a server session joined by a
//! simulated byte-stream transport that can be cut at any byte position.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use namesocket::engine::{AcceptError, Config, Event, KeyPair, Session, encode_reject};
use namesocket::wire::v2::RejectReason;
use namesocket::wire::{FirstMessage, accept_first};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Drains every transmit of `s` into `out`.
pub fn drain_tx(s: &mut Session, now: Instant, out: &mut Vec<u8>) {
    while let Some(t) = s.poll_transmit(now) {
        let n = t.len();
        assert!(n > 0);
        t.copy_to(out);
        s.advance(n);
    }
}

pub fn events(s: &mut Session) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

pub struct Pair {
    pub now: Instant,
    pub rng: StdRng,
    pub client: Session,
    pub server: Option<Session>,
    pub server_keys: Arc<KeyPair>,
    pub server_config: Config,
    /// Bytes in flight client -> server on the current transport.
    pub c2s: Vec<u8>,
    /// Bytes in flight server -> client on the current transport.
    pub s2c: Vec<u8>,
    /// Server side of the current transport has not classified its first
    /// message yet; bytes gathered so far.
    pub server_fresh: Option<Vec<u8>>,
    /// Rejections the server wrote on refused transports.
    pub rejects: Vec<RejectReason>,
    pub client_events: Vec<Event>,
    pub server_events: Vec<Event>,
    /// Application data accepted by write / returned by read.
    pub c_sent: Vec<u8>,
    pub s_sent: Vec<u8>,
    pub c_got: Vec<u8>,
    pub s_got: Vec<u8>,
    pub transport_up: bool,
}

impl Pair {
    pub fn new(seed: u64, client_config: Config, server_config: Config) -> Pair {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let ck = Arc::new(KeyPair::generate(&mut rng));
        let sk = Arc::new(KeyPair::generate(&mut rng));
        let client = Session::client(client_config, ck).expect("client config");
        let mut p = Pair {
            now,
            rng,
            client,
            server: None,
            server_keys: sk,
            server_config,
            c2s: Vec::new(),
            s2c: Vec::new(),
            server_fresh: None,
            rejects: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            c_sent: Vec::new(),
            s_sent: Vec::new(),
            c_got: Vec::new(),
            s_got: Vec::new(),
            transport_up: false,
        };
        p.connect();
        p
    }

    /// A pair whose client→server stream starts at offset `c2s` and whose
    /// server→client stream starts at `s2c` (through the engine's
    /// testing-only `set_stream_offsets_for_testing`): NEW is exchanged
    /// and the server session created, NEW_ACK is still in the server's
    /// output, no data has moved.
    pub fn new_at_offsets(
        seed: u64,
        client_config: Config,
        server_config: Config,
        c2s: u64,
        s2c: u64,
    ) -> Pair {
        let mut p = Pair::new(seed, client_config, server_config);
        p.client
            .set_stream_offsets_for_testing(c2s, s2c)
            .expect("fresh client");
        p.transmit();
        p.deliver(usize::MAX, 0);
        p.server
            .as_mut()
            .expect("server created from NEW")
            .set_stream_offsets_for_testing(s2c, c2s)
            .expect("fresh server");
        p
    }

    pub fn default_pair(seed: u64) -> Pair {
        Pair::new(seed, Config::default(), Config::default())
    }

    /// Opens a new transport (client transport_up; server side fresh).
    pub fn connect(&mut self) {
        self.c2s.clear();
        self.s2c.clear();
        self.server_fresh = Some(Vec::new());
        self.client
            .transport_up(self.now, &mut self.rng)
            .expect("transport_up");
        self.transport_up = true;
    }

    /// Moves everything each side has to transmit into the in-flight queues.
    pub fn transmit(&mut self) {
        if !self.transport_up {
            return;
        }
        drain_tx(&mut self.client, self.now, &mut self.c2s);
        if self.server_fresh.is_none()
            && let Some(s) = self.server.as_mut()
        {
            drain_tx(s, self.now, &mut self.s2c);
        }
    }

    fn server_input(&mut self, bytes: &[u8]) {
        if let Some(mut fresh) = self.server_fresh.take() {
            fresh.extend_from_slice(bytes);
            match accept_first(&fresh) {
                Ok(None) => {
                    self.server_fresh = Some(fresh);
                }
                Ok(Some((FirstMessage::New(new), used))) => {
                    match Session::accept_new(
                        self.now,
                        self.server_config.clone(),
                        self.server_keys.clone(),
                        &new,
                        &mut self.rng,
                    ) {
                        Ok(s) => {
                            self.server = Some(s);
                            let rest = fresh[used..].to_vec();
                            self.server_input(&rest);
                        }
                        Err(AcceptError::Refused { reason, .. }) => {
                            self.rejects.push(reason);
                            self.s2c.extend_from_slice(&encode_reject(reason));
                        }
                        Err(e) => panic!("server config: {e}"),
                    }
                }
                Ok(Some((FirstMessage::Resume(r), used))) => {
                    let s = self.server.as_mut().expect("server session");
                    match s.attach_resume(self.now, &r, &mut self.rng) {
                        Ok(()) => {
                            let rest = fresh[used..].to_vec();
                            self.server_input(&rest);
                        }
                        Err(reason) => {
                            self.rejects.push(reason);
                            self.s2c.extend_from_slice(&encode_reject(reason));
                            self.server_fresh = Some(Vec::new());
                        }
                    }
                }
                other => panic!("unexpected first message {other:?}"),
            }
            return;
        }
        if let Some(s) = self.server.as_mut() {
            let _ = s.handle_input(self.now, bytes);
        }
    }

    /// Delivers up to `c2s_max` / `s2c_max` in-flight bytes.
    pub fn deliver(&mut self, c2s_max: usize, s2c_max: usize) {
        let n = c2s_max.min(self.c2s.len());
        let chunk: Vec<u8> = self.c2s.drain(..n).collect();
        if !chunk.is_empty() {
            self.server_input(&chunk);
        }
        let n = s2c_max.min(self.s2c.len());
        let chunk: Vec<u8> = self.s2c.drain(..n).collect();
        if !chunk.is_empty() {
            let _ = self.client.handle_input(self.now, &chunk);
        }
    }

    /// Cuts the transport: delivers `keep_c2s` / `keep_s2c` more bytes and
    /// drops the rest of what is in flight, then both ends see it fail.
    pub fn cut(&mut self, keep_c2s: usize, keep_s2c: usize) {
        self.transmit();
        self.deliver(keep_c2s, keep_s2c);
        self.c2s.clear();
        self.s2c.clear();
        self.transport_up = false;
        self.client.transport_down(self.now);
        if self.server_fresh.is_none()
            && let Some(s) = self.server.as_mut()
        {
            s.transport_down(self.now);
        }
        self.server_fresh = None;
        self.collect_events();
    }

    pub fn collect_events(&mut self) {
        self.client_events.extend(events(&mut self.client));
        if let Some(s) = self.server.as_mut() {
            self.server_events.extend(events(s));
        }
    }

    pub fn write_client(&mut self, data: &[u8]) -> usize {
        let n = self.client.write(data).expect("client write");
        self.c_sent.extend_from_slice(&data[..n]);
        n
    }

    pub fn write_server(&mut self, data: &[u8]) -> usize {
        let s = self.server.as_mut().expect("server");
        let n = s.write(data).expect("server write");
        self.s_sent.extend_from_slice(&data[..n]);
        n
    }

    pub fn read_all(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            let n = self.client.read(&mut buf);
            if n == 0 {
                break;
            }
            self.c_got.extend_from_slice(&buf[..n]);
        }
        if let Some(s) = self.server.as_mut() {
            loop {
                let n = s.read(&mut buf);
                if n == 0 {
                    break;
                }
                self.s_got.extend_from_slice(&buf[..n]);
            }
        }
    }

    pub fn timers(&mut self) {
        self.client.handle_timeout(self.now);
        if let Some(s) = self.server.as_mut() {
            s.handle_timeout(self.now);
        }
    }

    /// One full round: transmit, deliver everything, read, run timers.
    pub fn round(&mut self) {
        self.transmit();
        self.deliver(usize::MAX, usize::MAX);
        self.read_all();
        self.timers();
        self.collect_events();
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Runs rounds (advancing time by `step`) until both streams are fully
    /// delivered and acknowledged, or `max_rounds` pass.
    pub fn settle(&mut self, step: Duration, max_rounds: usize) -> bool {
        for _ in 0..max_rounds {
            self.round();
            let done = (self.client.is_established() || self.client.is_finished())
                && self.c2s.is_empty()
                && self.s2c.is_empty()
                && self.c_got.len() == self.s_sent.len()
                && self.s_got.len() == self.c_sent.len()
                && self.client.unacked_bytes() == 0
                && self.server.as_ref().is_some_and(|s| s.unacked_bytes() == 0);
            if done {
                return true;
            }
            self.advance(step);
        }
        false
    }

    pub fn random_bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill_bytes(&mut v);
        v
    }
}
