//! The download URL parser of `GET /api/files/{id}` (src/files.rs, through the `fuzzing`
//! feature): the query's `room`, `exp` and `sig`, and the path id, as `download` reads them.
//!
//! Input: `<path id>\0<query>`; without a NUL byte the whole input is the query (and the id
//! is a valid one). Checked: no panic, a repeated parameter is refused, what parses is what
//! the query said, and every URL `UrlSigner::url` makes parses back and verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::fuzzing::{parse_file_url, parse_file_url_query};
use tandem_signaling::files::UrlSigner;
use tandem_signaling::{FileId, RoomId};

const ID: &str = "0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (id, query) = match text.split_once('\0') {
        Some((id, q)) => (id, q),
        None => (ID, &*text),
    };
    let params = parse_file_url_query(query);
    let pairs: Vec<(&str, &str)> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let count = |k: &str| pairs.iter().filter(|(key, _)| *key == k).count();
    let repeated = ["room", "exp", "sig"].iter().any(|k| count(k) > 1);
    match params {
        None => assert!(repeated, "refused without a repeated parameter: {query:?}"),
        Some(found) => {
            assert!(!repeated, "a repeated parameter was accepted: {query:?}");
            for (k, v) in ["room", "exp", "sig"].into_iter().zip(found) {
                let want = pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
                assert_eq!(v, want, "{k} of {query:?}");
            }
        }
    }
    if let Ok((file, room, exp, sig)) = parse_file_url(id, query) {
        assert!(params.is_some());
        assert_eq!(FileId::parse(id), Some(file));
        let [r, e, s] = params.expect("parsed above");
        assert_eq!(r.and_then(RoomId::parse), Some(room));
        assert_eq!(e.and_then(|e| e.parse::<u64>().ok()), Some(exp));
        assert_eq!(s, Some(sig));
    }

    // What the server hands out parses back and verifies.
    let signer = UrlSigner::new(data);
    let seed = data
        .iter()
        .fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b));
    let file = FileId::from_raw(u128::from(seed) * 0x1_0000_0001);
    let room = RoomId::from_raw(u128::from(!seed) << 64 | u128::from(seed));
    let url = signer.url(file, room, seed);
    let (path, query) = url.split_once('?').expect("a query");
    let id = path.strip_prefix("/api/files/").expect("the files route");
    let (f, r, e, s) = parse_file_url(id, query).expect("our own URL parses");
    assert_eq!((f, r, e), (file, room, seed));
    assert!(signer.verify(f, r, e, s));
});
