//! The typed helpers (extension traits) on the process-wide instance,
//! pointed at a fake control server through `HIPD_CONTROL_SOCKET`. One
//! test only: the global instance reads the variable once.

mod common;

use std::net::{IpAddr, UdpSocket};
#[cfg(feature = "tokio")]
use std::os::fd::AsFd;

use common::*;
use hipd_backend::control::{LocPref, Reply, Request, Response, ShimSetting};
use shimapi::*;

#[test]
fn extension_traits_on_the_global_instance() {
    let d = FakeDaemon::start(|req| match req {
        Request::ShimGet { .. } => Reply::ok(Response::ShimContext { ctx: context() }),
        Request::ShimSendToken { .. } => Reply::ok(Response::ShimToken { token: 9 }),
        _ => done(),
    });
    // SAFETY: set before any other thread of this test binary reads the
    // environment (this file has a single test).
    unsafe { std::env::set_var("HIPD_CONTROL_SOCKET", &d.path) };
    in_netns(move || {
        let rx = UdpSocket::bind("[2001:20::2]:0").unwrap();
        let tx = UdpSocket::bind("[2001:20::1]:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        rx.connect(tx.local_addr().unwrap()).unwrap();

        assert_eq!(tx.shim_associated().unwrap(), Association::Yes);
        assert!(!tx.dont_shim().unwrap());
        assert!(tx.hot_standby().unwrap());
        assert_eq!(tx.app_timeout().unwrap(), 15);
        assert_eq!(tx.app_timeout_ms().unwrap(), 15000);
        assert_eq!(tx.path_explore().unwrap().initprobeto, 500);
        assert_eq!(
            tx.peer_pref().unwrap().unwrap().addr,
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(tx.local_locators().unwrap().len(), 2);
        assert_eq!(tx.peer_locators().unwrap().len(), 2);
        assert_eq!(tx.local_send().unwrap(), None);
        assert_eq!(
            tx.peer_send().unwrap().unwrap().addr,
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        d.clear();
        let l = Locator::new("192.0.2.1".parse().unwrap()).with_pref(2, 3);
        tx.set_local_pref(&l).unwrap();
        tx.set_peer_locators(&[l]).unwrap();
        tx.set_hot_standby(false).unwrap();
        tx.set_app_timeout_ms(250).unwrap();
        tx.set_peer_send(None).unwrap();
        tx.send_feedback(Feedback {
            direction: FeedbackDirection::Inbound,
            indicator: FeedbackIndicator::UnableToConnect,
        })
        .unwrap();
        let sets: Vec<ShimSetting> = d
            .requests()
            .into_iter()
            .filter_map(|r| match r {
                Request::ShimSet { set, .. } => Some(set),
                _ => None,
            })
            .collect();
        let lp = LocPref {
            addr: l.addr,
            prio: 2,
            weight: 3,
        };
        assert_eq!(
            sets,
            vec![
                ShimSetting::LocalPref { loc: lp },
                ShimSetting::LoclistPeer { locs: vec![lp] },
                ShimSetting::HotStandby { on: false },
                ShimSetting::AppTimeoutMs { ms: 250 },
                ShimSetting::PeerSend { addr: None },
                ShimSetting::Feedback {
                    direction: 1,
                    indicator: 1
                },
            ]
        );
        // Feedback alone sent nothing.
        rx.set_nonblocking(true).unwrap();
        assert!(rx.recv(&mut [0u8; 8]).is_err());
        rx.set_nonblocking(false).unwrap();

        // Per-datagram locators (std) and RECV with zero-filled info.
        rx.set_peer_recv(true).unwrap();
        let pair = LocatorPair {
            local: None,
            peer: Some("2001:db8:2::2".parse().unwrap()),
        };
        assert_eq!(tx.send_with_locators(b"hi", &pair, None).unwrap(), 2);
        let mut buf = [0u8; 8];
        let (n, from, got) = rx.recv_with_locators(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(from, Some(tx.local_addr().unwrap()));
        // Loopback delivery carries no daemon tag: no locator known.
        assert_eq!(got, LocatorPair::default());
        rx.shim_release().unwrap();

        #[cfg(feature = "tokio")]
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let rx = tokio::net::UdpSocket::bind("[2001:20::2]:0").await.unwrap();
                let tx = tokio::net::UdpSocket::bind("[2001:20::1]:0").await.unwrap();
                tx.connect(rx.local_addr().unwrap()).await.unwrap();
                rx.connect(tx.local_addr().unwrap()).await.unwrap();
                shimapi::setsockopt(
                    rx.as_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_RECVTCLASS,
                    &1i32.to_ne_bytes(),
                )
                .unwrap();
                assert_eq!(tx.shim_associated().unwrap(), Association::Yes);
                let n = ShimTokioUdpExt::send_with_locators(&tx, b"async", &pair, None)
                    .await
                    .unwrap();
                assert_eq!(n, 5);
                let mut buf = [0u8; 8];
                let (n, _, _) = ShimTokioUdpExt::recv_with_locators(&rx, &mut buf)
                    .await
                    .unwrap();
                assert_eq!(&buf[..n], b"async");
            });
        }
    });
}
