//! `tandem_turn::frame_len` splitting a TCP/TLS stream that arrives in arbitrary pieces.
//!
//! Input: one byte `n` (the number of cut points, modulo 16), `n` little-endian `u16` cut
//! points, then the stream. The stream is fed to a buffer piece by piece, as the shell reads
//! it, and split with `frame_len` after every piece. Checked: every frame length is sane, a
//! frame is never announced before it is complete nor changed by more bytes arriving, the
//! frames (and where the stream is refused) do not depend on how the stream was cut, and every
//! frame goes through the TURN core without a panic.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{split_at_points, Reader};
use tandem_turn::{
    channel_data_header, channel_data_padding, frame_len, ClientSocket, Config, Server, Transport,
    MAX_MESSAGE_LEN,
};

/// The frames of `stream` cut into `pieces`, and whether the stream was refused.
fn frames(pieces: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match frame_len(&buf) {
                Ok(Some(n)) => {
                    assert!(
                        n <= buf.len(),
                        "frame of {n} bytes in a {}-byte buffer",
                        buf.len()
                    );
                    assert!(n >= 4 && n % 4 == 0, "frame length {n}");
                    assert!(n <= MAX_MESSAGE_LEN + 4, "frame length {n}");
                    // Not announced before it was complete, not changed by what follows.
                    for short in [n - 1, n / 2, 1] {
                        assert_eq!(frame_len(&buf[..short]), Ok(None), "prefix of {short}");
                    }
                    let mut longer = buf[..n].to_vec();
                    longer.extend_from_slice(&[0x40, 0, 0, 0]);
                    assert_eq!(frame_len(&longer), Ok(Some(n)));
                    out.push(buf.drain(..n).collect());
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let cuts: Vec<u16> = (0..r.u8() % 16).map(|_| r.u16()).collect();
    let stream = r.rest();
    let pieces = split_at_points(stream, &cuts);
    let (split, refused) = frames(&pieces);
    let (whole, whole_refused) = frames(&[stream]);
    assert_eq!(split, whole, "the frames depend on how the stream was cut");
    assert_eq!(refused, whole_refused);

    let cfg = Config {
        auth_secret: b"fuzz-secret".to_vec(),
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut server = Server::new(cfg, [3; 32], t0, 1_700_000_000_000).expect("valid config");
    let client = ClientSocket {
        addr: "192.0.2.1:40000".parse().expect("address"),
        transport: Transport::Tcp,
    };
    for frame in &split {
        if let Some((_, _, range)) = server.handle_client_input(frame, client, t0) {
            assert!(range.start <= range.end && range.end <= frame.len());
        }
        while server.poll_output().is_some() {}
    }

    // The helpers the shell frames peer data with.
    let len = stream.len();
    assert_eq!(
        channel_data_header(0x4000, len).is_some(),
        len <= usize::from(u16::MAX)
    );
    let pad = channel_data_padding(len);
    assert!(pad < 4 && (len + pad) % 4 == 0);
});
