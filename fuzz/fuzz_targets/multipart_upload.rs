//! The multipart upload handler of `POST /api/files` (src/files.rs, through the `fuzzing`
//! feature): the body streamed through `multer` with the size limits and the storage
//! reservation, the form's fields, the file's sniffed type, voice-note limits and the
//! sanitized name — everything before the file is stored.
//!
//! Input (see `tandem_fuzz::Reader`): a byte choosing the store's limits, a flag byte and the
//! `Content-Type` header (absent when the flag is even; when bit 1 is set the header is
//! `multipart/form-data; boundary=` followed by the given string), a flag byte and the
//! `Content-Length` header, a byte `n` (cut points, modulo 16) and `n` `u16` cut points, a
//! byte whose bit 0 makes the connection fail after the body, then the body (the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::fuzzing::{multipart_upload, UploadLimits, UploadRequest};
use tandem_fuzz::{split_at_points, Reader};
use tandem_signaling::files::{Category, MAX_CLIENT_ID_CHARS};

const LIMITS: [UploadLimits; 3] = [
    UploadLimits {
        max_size: 4096,
        storage_budget: 1 << 20,
        max_voice_ms: 300_000,
    },
    // A budget smaller than the largest file: `storage_full` mid-stream.
    UploadLimits {
        max_size: 4096,
        storage_budget: 300,
        max_voice_ms: 300_000,
    },
    UploadLimits {
        max_size: 64,
        storage_budget: 1 << 20,
        max_voice_ms: 1000,
    },
];

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let limits = LIMITS[usize::from(r.u8()) % LIMITS.len()];
    let ct_flag = r.u8();
    let ct = r.bytes();
    let content_type = (ct_flag & 1 == 1).then(|| {
        if ct_flag & 2 == 2 {
            [b"multipart/form-data; boundary=".as_slice(), ct].concat()
        } else {
            ct.to_vec()
        }
    });
    let has_len = r.bool();
    let len = r.bytes();
    let content_length = has_len.then(|| len.to_vec());
    let cuts: Vec<u16> = (0..r.u8() % 16).map(|_| r.u16()).collect();
    let fail_at_end = r.bool();
    let body = r.rest();
    let chunks = split_at_points(body, &cuts)
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    let req = UploadRequest {
        content_type,
        content_length,
        chunks,
        fail_at_end,
    };
    // multipart_upload itself panics if the reservation is not given back.
    let Ok(up) = multipart_upload(limits, req) else {
        return;
    };
    assert!(
        up.size >= 1 && up.size as u64 <= limits.max_size,
        "size {}",
        up.size
    );
    assert!(up.size <= body.len(), "more file than body");
    assert_eq!(
        up.reserved, up.size as u64,
        "reserved {} for {} bytes",
        up.reserved, up.size
    );
    assert!(up.reserved <= limits.storage_budget);
    let n = up.name.chars().count();
    assert!((1..=100).contains(&n), "name {:?}", up.name);
    if up.voice {
        assert_eq!(up.ty.category, Category::Audio);
        let d = up.duration_ms.expect("a voice note has a duration");
        assert!(d >= 1 && d <= limits.max_voice_ms);
    } else {
        assert_eq!(up.duration_ms, None);
    }
    if let Some(c) = &up.client_id {
        let n = c.chars().count();
        assert!((1..=MAX_CLIENT_ID_CHARS).contains(&n) && !c.chars().any(char::is_control));
    }
});
