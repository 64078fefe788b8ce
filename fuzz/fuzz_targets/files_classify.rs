//! The shared-file rules of `tandem_signaling::files`: `classify` (sniffed type against the
//! allow-list and the declared type), `sanitize_name`, the `Content-Disposition` name forms,
//! `valid_client_id`, and the URL signatures (`UrlSigner::sign` / `verify`).
//!
//! Input (see `tandem_fuzz::Reader`): a flag byte and the declared type (absent when the flag
//! is even), the file name, the signing key, a signature to check, the file id, room id and
//! expiry as `u64`s, then the file's bytes (the rest).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::Reader;
use tandem_signaling::files::{
    ascii_name, classify, rfc8187, sanitize_name, valid_client_id, Category, FileType, UrlSigner,
    MAX_NAME_CHARS,
};
use tandem_signaling::{FileId, RoomId};

/// One file type of each kind on the allow-list, to sanitize every name against.
fn types() -> &'static [FileType] {
    static TYPES: OnceLock<Vec<FileType>> = OnceLock::new();
    TYPES.get_or_init(|| {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\0\0\0\0\0";
        let pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n";
        let mut ogg = b"OggS\0\x02".to_vec();
        ogg.resize(64, 0);
        [
            classify(png, Some("image/png"), "a.png"),
            classify(pdf, Some("application/pdf"), "a.pdf"),
            classify(&ogg, Some("audio/ogg"), "a.ogg"),
            classify(b"hello", None, "a.txt"),
        ]
        .into_iter()
        .map(|t| t.expect("a known type"))
        .collect()
    })
}

fn check_name(raw: &str, ty: &FileType) {
    let name = sanitize_name(raw, ty);
    let n = name.chars().count();
    assert!(
        (1..=MAX_NAME_CHARS).contains(&n),
        "{n} characters: {name:?}"
    );
    assert!(
        !name.chars().any(|c| c.is_control()
            || matches!(c, '"' | '\'' | '`' | '\\' | '/' | ':' | '*' | '?' | '<' | '>' | '|' | ';')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')),
        "unsafe character in {name:?}"
    );
    assert!(
        !name.starts_with('.') && !name.starts_with(char::is_whitespace),
        "{name:?}"
    );
    let (stem, _ext) = name.rsplit_once('.').expect("the name has an extension");
    assert!(!stem.is_empty(), "{name:?}");
    // Idempotent, so also: the extension fits the type (else another one would be added).
    assert_eq!(
        sanitize_name(&name, ty),
        name,
        "sanitizing is not idempotent"
    );
    let ascii = ascii_name(&name);
    assert!(ascii.chars().all(|c| c.is_ascii_graphic() || c == ' '));
    assert_eq!(ascii.chars().count(), n);
    let star = rfc8187(&name);
    let encoded = star.strip_prefix("UTF-8''").expect("the charset prefix");
    assert!(encoded.is_ascii() && !encoded.contains([' ', '"', ';', ',', '\\']));
    assert_eq!(
        percent_decode(encoded),
        name.as_bytes(),
        "filename* does not decode back"
    );
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex digits");
            out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let has_declared = r.bool();
    let declared = r.string();
    let declared = has_declared.then_some(declared.as_str());
    let name = r.string();
    let key = r.bytes();
    let sig = r.string();
    let (file, room, exp) = (r.u64(), r.u64(), r.u64());
    let bytes = r.rest();

    if let Ok(ty) = classify(bytes, declared, &name) {
        assert!(Category::ALL.contains(&ty.category));
        assert!(!ty.ext.is_empty() && !ty.mime.is_empty());
        if ty.mime.starts_with("text/plain") {
            assert!(
                std::str::from_utf8(bytes).is_ok(),
                "non-UTF-8 bytes passed as text"
            );
        }
        check_name(&name, &ty);
    }
    for ty in types() {
        check_name(&name, ty);
    }
    let _ = valid_client_id(&name);

    let signer = UrlSigner::new(key);
    let (file, room) = (
        FileId::from_raw(u128::from(file) << 64 | u128::from(room)),
        RoomId::from_raw(u128::from(room).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    );
    let good = signer.sign(file, room, exp);
    assert_eq!(good.len(), 64);
    assert!(signer.verify(file, room, exp, &good));
    assert!(!signer.verify(file, room, exp.wrapping_add(1), &good));
    if signer.verify(file, room, exp, &sig) {
        assert!(
            sig.eq_ignore_ascii_case(&good),
            "{sig:?} verified, the signature is {good}"
        );
    }
    let url = signer.url(file, room, exp);
    assert!(url.starts_with("/api/files/") && url.is_ascii());
});
