//! Codec round trips, never-panic decoding and split-anywhere decoding for
//! every v1 and v2 message and frame.

use std::net::{Ipv4Addr, Ipv6Addr};

use namesocket::wire::v1;
use namesocket::wire::v2::{self, Handshake, Params, RejectReason, SessionId};
use namesocket::wire::{
    Control, FirstMessage, Frame, FrameDecoder, FrameItem, WireError, accept_first,
};
use proptest::prelude::*;

fn v1_packet() -> impl Strategy<Value = v1::Packet> {
    prop_oneof![
        Just(v1::Packet::New),
        any::<u32>().prop_map(|d| v1::Packet::ResumeAck(v1::ResumeAck { data_rcvd: d })),
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(d, c, s, cp, sp)| v1::Packet::Resume6(v1::Resume6 {
                data_rcvd: d,
                client_addr: Ipv6Addr::from(c),
                server_addr: Ipv6Addr::from(s),
                client_port: cp,
                server_port: sp,
            })),
        (
            any::<u32>(),
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(|(d, c, s, cp, sp)| v1::Packet::Resume4(v1::Resume4 {
                data_rcvd: d,
                client_addr: Ipv4Addr::from(c),
                server_addr: Ipv4Addr::from(s),
                client_port: cp,
                server_port: sp,
            })),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c, d)| Params {
        heartbeat_ms: a,
        dead_timeout_ms: b,
        resume_window_ms: c,
        send_buffer_limit: d,
    })
}

fn handshake() -> impl Strategy<Value = Handshake> {
    prop_oneof![
        (
            any::<[u8; 16]>(),
            any::<[u8; 16]>(),
            any::<[u8; 32]>(),
            params()
        )
            .prop_map(|(sid, n, k, p)| Handshake::New(v2::New {
                session_id: SessionId(sid),
                client_nonce: n,
                client_public: k,
                params: p,
            })),
        (any::<[u8; 16]>(), any::<[u8; 32]>(), params()).prop_map(|(n, k, p)| {
            Handshake::NewAck(v2::NewAck {
                server_nonce: n,
                server_public: k,
                params: p,
            })
        }),
        (
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(sid, g, n, r, m)| Handshake::Resume(v2::Resume {
                session_id: SessionId(sid),
                generation: g,
                nonce: n,
                bytes_received: r,
                proof: m,
            })),
        (
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(g, n, r, m)| Handshake::ResumeAck(v2::ResumeAck {
                generation: g,
                nonce: n,
                bytes_received: r,
                proof: m,
            })),
        any::<u8>().prop_map(|c| Handshake::Reject(RejectReason::from_code(c))),
    ]
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        any::<u64>().prop_map(Control::Ack),
        any::<u64>().prop_map(Control::Ping),
        any::<u64>().prop_map(Control::Pong),
        any::<u64>().prop_map(Control::Shutdown),
        any::<u64>().prop_map(Control::Close),
        Just(Control::CloseAck),
        any::<u16>().prop_map(Control::Error),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum OwnedFrame {
    Data(Vec<u8>),
    Control(Control),
}

fn frames() -> impl Strategy<Value = Vec<OwnedFrame>> {
    prop::collection::vec(
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300).prop_map(OwnedFrame::Data),
            control().prop_map(OwnedFrame::Control),
        ],
        0..12,
    )
}

fn encode(frames: &[OwnedFrame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        match f {
            OwnedFrame::Data(d) => Frame::Data(d).emit(&mut out),
            OwnedFrame::Control(c) => Frame::Control(*c).emit(&mut out),
        }
    }
    out
}

/// Decodes a whole stream fed in the given pieces; DATA pieces are merged
/// with adjacent DATA so the result is independent of the split.
/// Concatenated DATA plus each control frame with the data offset it followed.
type Decoded = (Vec<u8>, Vec<(usize, Control)>);

fn decode_pieces(pieces: &[&[u8]]) -> Result<Decoded, WireError> {
    let mut dec = FrameDecoder::new();
    let mut data = Vec::new();
    let mut ctrl = Vec::new();
    for piece in pieces {
        let mut rest: &[u8] = piece;
        while !rest.is_empty() {
            let (n, item) = dec.next(rest)?;
            rest = &rest[n..];
            match item {
                Some(FrameItem::Data(d)) => data.extend_from_slice(d),
                Some(FrameItem::Control(c)) => ctrl.push((data.len(), c)),
                None => {}
            }
        }
    }
    Ok((data, ctrl))
}

fn expected(frames: &[OwnedFrame]) -> Decoded {
    let mut data = Vec::new();
    let mut ctrl = Vec::new();
    for f in frames {
        match f {
            OwnedFrame::Data(d) => data.extend_from_slice(d),
            OwnedFrame::Control(c) => ctrl.push((data.len(), *c)),
        }
    }
    (data, ctrl)
}

proptest! {
    #[test]
    fn v1_round_trip(p in v1_packet()) {
        let mut b = Vec::new();
        p.emit(&mut b);
        prop_assert_eq!(b.len(), p.encoded_len());
        prop_assert_eq!(v1::Packet::parse(&b), Ok(Some((p, b.len()))));
        prop_assert_eq!(accept_first(&b), Ok(Some((FirstMessage::V1(p), b.len()))));
        for cut in 0..b.len() {
            prop_assert_eq!(v1::Packet::parse(&b[..cut]), Ok(None));
        }
    }

    #[test]
    fn v2_handshake_round_trip(h in handshake(), trailer in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut b = h.to_vec();
        prop_assert_eq!(b.len(), h.encoded_len());
        let len = b.len();
        b.extend_from_slice(&trailer);
        prop_assert_eq!(Handshake::parse(&b), Ok(Some((h, len))));
        for cut in 0..len {
            prop_assert_eq!(Handshake::parse(&b[..cut]), Ok(None));
        }
    }

    #[test]
    fn v2_handshake_body_extension_is_ignored(h in handshake(), ext in prop::collection::vec(any::<u8>(), 1..40)) {
        let mut b = h.to_vec();
        let body = u16::from_be_bytes([b[4], b[5]]) as usize + ext.len();
        b[4..6].copy_from_slice(&(body as u16).to_be_bytes());
        b.extend_from_slice(&ext);
        prop_assert_eq!(Handshake::parse(&b), Ok(Some((h, b.len()))));
    }

    #[test]
    fn frames_round_trip_and_split_anywhere(fs in frames(), splits in prop::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let bytes = encode(&fs);
        let want = expected(&fs);
        // Whole.
        prop_assert_eq!(decode_pieces(&[&bytes]), Ok(want.clone()));
        // Complete-frame parser agrees.
        let mut rest: &[u8] = &bytes;
        let mut got = Vec::new();
        while !rest.is_empty() {
            let (f, n) = Frame::parse(rest).unwrap().unwrap();
            got.push(match f { Frame::Data(d) => OwnedFrame::Data(d.to_vec()), Frame::Control(c) => OwnedFrame::Control(c) });
            rest = &rest[n..];
        }
        prop_assert_eq!(expected(&got), want.clone());
        // Random multi-way split.
        let mut cuts: Vec<usize> = splits.iter().map(|i| i.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut prev = 0;
        for c in cuts { pieces.push(&bytes[prev..c]); prev = c; }
        pieces.push(&bytes[prev..]);
        prop_assert_eq!(decode_pieces(&pieces), Ok(want));
    }

    #[test]
    fn decoders_never_panic(b in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = v1::Packet::parse(&b);
        let _ = Handshake::parse(&b);
        let _ = accept_first(&b);
        let _ = Frame::parse(&b);
        let _ = decode_pieces(&[&b]);
        // Byte-at-a-time gives the same verdict as all at once.
        let pieces: Vec<&[u8]> = b.chunks(1).collect();
        prop_assert_eq!(decode_pieces(&pieces), decode_pieces(&[&b]));
    }

    #[test]
    fn decoders_never_panic_with_valid_header(ty in any::<u8>(), ver in 0u8..4, rest in prop::collection::vec(any::<u8>(), 0..120)) {
        let mut b = vec![0x4E, 0x53, ver, ty];
        b.extend_from_slice(&rest);
        let _ = accept_first(&b);
        let _ = Handshake::parse(&b);
        let _ = v1::Packet::parse(&b);
    }
}

#[test]
fn every_split_point_of_a_mixed_stream() {
    let fs = vec![
        OwnedFrame::Data(b"hello".to_vec()),
        OwnedFrame::Control(Control::Ack(0x0102_0304_0506_0708)),
        OwnedFrame::Data(vec![7; 1000]),
        OwnedFrame::Control(Control::CloseAck),
        OwnedFrame::Control(Control::Error(77)),
        OwnedFrame::Data(Vec::new()),
        OwnedFrame::Control(Control::Ping(9)),
    ];
    let bytes = encode(&fs);
    let want = expected(&fs);
    for i in 0..=bytes.len() {
        for j in i..=bytes.len() {
            if j % 97 != 0 && j != i {
                continue;
            }
            let pieces = [&bytes[..i], &bytes[i..j], &bytes[j..]];
            assert_eq!(decode_pieces(&pieces), Ok(want.clone()), "split {i} {j}");
        }
    }
}

#[test]
fn large_data_is_split_into_max_frames() {
    let big = vec![3u8; 200_000];
    let mut out = Vec::new();
    Frame::Data(&big).emit(&mut out);
    assert_eq!(out.len(), big.len() + 4 * 3);
    let (data, ctrl) = decode_pieces(&[&out]).unwrap();
    assert_eq!(data, big);
    assert!(ctrl.is_empty());
}

#[test]
fn non_namesocket_and_bad_versions_are_clear_errors() {
    assert_eq!(
        accept_first(b"HTTP/1.1 200 OK\r\n"),
        Err(WireError::BadMagic {
            found: u16::from_be_bytes(*b"HT")
        })
    );
    assert_eq!(
        accept_first(b"SSH-2.0-OpenSSH"),
        Err(WireError::BadMagic {
            found: u16::from_be_bytes(*b"SS")
        })
    );
    assert_eq!(
        accept_first(&[0x4E, 0x53, 3, 1]),
        Err(WireError::UnsupportedVersion(3))
    );
    assert_eq!(
        accept_first(&[0x4E, 0x53, 0, 1]),
        Err(WireError::UnsupportedVersion(0))
    );
    assert_eq!(
        accept_first(&[0x4E, 0x53, 2, 99, 0, 0]),
        Err(WireError::UnknownType { version: 2, ty: 99 })
    );
    assert_eq!(
        accept_first(&[0x4E, 0x53, 1, 9]),
        Err(WireError::UnknownType { version: 1, ty: 9 })
    );
    // A NEW_ACK is not a valid first message from a client.
    let ack = Handshake::NewAck(v2::NewAck {
        server_nonce: [1; 16],
        server_public: [2; 32],
        params: Params {
            heartbeat_ms: 1,
            dead_timeout_ms: 2,
            resume_window_ms: 3,
            send_buffer_limit: 4,
        },
    })
    .to_vec();
    assert_eq!(
        accept_first(&ack),
        Err(WireError::UnexpectedType {
            ty: v2::TYPE_NEW_ACK
        })
    );
    // Truncated body length.
    assert!(matches!(
        Handshake::parse(&[0x4E, 0x53, 2, v2::TYPE_NEW, 0, 3, 1, 2, 3]),
        Err(WireError::BadLength { .. })
    ));
    // Oversized body length.
    assert!(matches!(
        Handshake::parse(&[0x4E, 0x53, 2, v2::TYPE_REJECT, 0xFF, 0xFF]),
        Err(WireError::BadLength { .. })
    ));
}

#[test]
fn thesis_layout_ipv6_resume() {
    let r = v1::Packet::Resume6(v1::Resume6 {
        data_rcvd: 11,
        client_addr: "3ffe:2a00:100:3100::f00d:cafe".parse().unwrap(),
        server_addr: "3ffe:2a00:100:3100::dead:beef".parse().unwrap(),
        client_port: 1040,
        server_port: 1234,
    });
    let mut b = Vec::new();
    r.emit(&mut b);
    assert_eq!(b.len(), 44);
    assert_eq!(&b[..8], &[0x4E, 0x53, 1, 2, 0, 0, 0, 11]);
    assert_eq!(&b[40..], &[0x04, 0x10, 0x04, 0xD2]);
    assert_eq!(&b[8..10], &[0x3f, 0xfe]);
}
