//! Prints how long each lab-building step takes (run as root):
//! `cargo run -p netlab --example lab_timing`.

use std::time::{Duration, Instant};

fn main() -> Result<(), netlab::LabError> {
    let t = Instant::now();
    let step = |what: &str, since: &mut Instant| {
        println!(
            "{what:>14}: {:>8.1} ms",
            since.elapsed().as_secs_f64() * 1e3
        );
        *since = Instant::now();
    };
    let mut s = t;
    let lab = netlab::Lab::new()?;
    step("Lab::new", &mut s);
    let a = lab.add_host("a")?;
    step("add_host a", &mut s);
    let b = lab.add_host("b")?;
    step("add_host b", &mut s);
    let l0 = lab.link(&a, &b)?;
    step("link 0", &mut s);
    lab.link(&a, &b)?;
    step("link 1", &mut s);
    lab.wait_usable(Duration::from_secs(5))?;
    step("wait_usable", &mut s);
    l0.drop_rx(&b)?;
    step("drop_rx", &mut s);
    l0.restore()?;
    step("restore", &mut s);
    lab.close()?;
    step("close", &mut s);
    println!(
        "{:>14}: {:>8.1} ms",
        "total",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
