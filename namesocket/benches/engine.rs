//! Engine data-path throughput over an in-memory pair: the client writes in
//! 512/2048/8192-byte chunks, bytes move through poll_transmit/advance into
//! the server's handle_input and are read out; ACKs flow back.

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use namesocket::engine::{Config, KeyPair, Session};
use namesocket::wire::FirstMessage;
use namesocket::wire::accept_first;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn pump(from: &mut Session, to: &mut Session, now: Instant, wire: &mut Vec<u8>) {
    wire.clear();
    while let Some(t) = from.poll_transmit(now) {
        let n = t.len();
        t.copy_to(wire);
        from.advance(n);
    }
    if !wire.is_empty() {
        to.handle_input(now, wire).expect("input");
    }
}

fn pair(now: Instant) -> (Session, Session) {
    let mut rng = StdRng::seed_from_u64(7);
    let ck = Arc::new(KeyPair::generate(&mut rng));
    let sk = Arc::new(KeyPair::generate(&mut rng));
    let mut c = Session::client(Config::default(), ck).expect("config");
    c.transport_up(now, &mut rng).expect("up");
    let mut first = Vec::new();
    while let Some(t) = c.poll_transmit(now) {
        let n = t.len();
        t.copy_to(&mut first);
        c.advance(n);
    }
    let Ok(Some((FirstMessage::New(new), used))) = accept_first(&first) else {
        panic!("no NEW");
    };
    let mut s = Session::accept_new(now, Config::default(), sk, &new, &mut rng).expect("config");
    s.handle_input(now, &first[used..]).expect("input");
    let mut w = Vec::new();
    pump(&mut s, &mut c, now, &mut w);
    (c, s)
}

fn bench(c: &mut Criterion) {
    const TOTAL: usize = 4 << 20;
    let mut g = c.benchmark_group("engine_transfer_4MiB");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    for size in [512usize, 2048, 8192] {
        g.bench_function(format!("write_{size}"), |b| {
            let now = Instant::now();
            let (mut cl, mut sv) = pair(now);
            let data = vec![0x5au8; size];
            let mut rbuf = vec![0u8; 64 << 10];
            let mut wire = Vec::with_capacity(128 << 10);
            b.iter(|| {
                let mut sent = 0;
                let mut got = 0;
                while got < TOTAL {
                    if sent < TOTAL {
                        sent += cl.write(&data).expect("write");
                    }
                    pump(&mut cl, &mut sv, now, &mut wire);
                    loop {
                        let n = sv.read(&mut rbuf);
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    pump(&mut sv, &mut cl, now, &mut wire);
                }
                got
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
