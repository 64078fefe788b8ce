//! The rules of shared files, sans-I/O: what a file is (sniffed from its bytes against the
//! allow-list and the declared type), what its name becomes, and how its download URL is
//! signed. The shell streams, stores and serves the bytes; this module only decides.

use hmac::{Mac, SimpleHmac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::SignalError;
use crate::ids::{FileId, RoomId};

/// Longest sanitized file name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest `clientId` of an upload, as for chat messages.
pub const MAX_CLIENT_ID_CHARS: usize = 64;

/// What kind of thing a file is, for the client's rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Image,
    Video,
    Audio,
    Document,
}

impl Category {
    pub const ALL: [Category; 4] = [Self::Image, Self::Video, Self::Audio, Self::Document];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Document => "document",
        }
    }
}

/// A file accepted onto the allow-list: the type it is stored and served with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileType {
    pub mime: &'static str,
    pub category: Category,
    /// The usual extension (without the dot), appended to a name that lacks a fitting one.
    pub ext: &'static str,
    /// Every extension that fits this type.
    exts: &'static [&'static str],
}

impl FileType {
    const fn new(
        mime: &'static str,
        category: Category,
        exts: &'static [&'static str],
    ) -> FileType {
        FileType {
            mime,
            category,
            ext: exts[0],
            exts,
        }
    }
}

const JPEG: FileType = FileType::new("image/jpeg", Category::Image, &["jpg", "jpeg", "jfif"]);
const PNG: FileType = FileType::new("image/png", Category::Image, &["png"]);
const GIF: FileType = FileType::new("image/gif", Category::Image, &["gif"]);
const WEBP: FileType = FileType::new("image/webp", Category::Image, &["webp"]);
const PDF: FileType = FileType::new("application/pdf", Category::Document, &["pdf"]);
const MP4_VIDEO: FileType = FileType::new("video/mp4", Category::Video, &["mp4", "m4v"]);
const MP4_AUDIO: FileType = FileType::new("audio/mp4", Category::Audio, &["m4a", "mp4"]);
const WEBM_VIDEO: FileType = FileType::new("video/webm", Category::Video, &["webm"]);
const WEBM_AUDIO: FileType = FileType::new("audio/webm", Category::Audio, &["weba", "webm"]);
const OGG_AUDIO: FileType = FileType::new("audio/ogg", Category::Audio, &["ogg", "oga", "opus"]);
const OGG_VIDEO: FileType = FileType::new("video/ogg", Category::Video, &["ogv", "ogg"]);
const MP3: FileType = FileType::new("audio/mpeg", Category::Audio, &["mp3"]);
const WAV: FileType = FileType::new("audio/wav", Category::Audio, &["wav"]);
const TEXT: FileType = FileType::new("text/plain; charset=utf-8", Category::Document, &["txt"]);

/// Every type on the allow-list.
const ALLOWED: [FileType; 14] = [
    JPEG, PNG, GIF, WEBP, PDF, MP4_VIDEO, MP4_AUDIO, WEBM_VIDEO, WEBM_AUDIO, OGG_AUDIO, OGG_VIDEO,
    MP3, WAV, TEXT,
];

/// A file object as read back (from another node): its MIME type must be on the allow-list.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileInfoIn {
    file_id: FileId,
    name: String,
    size: u64,
    mime_type: String,
    category: Category,
    url: String,
    expires_at: String,
    #[serde(default)]
    duration_ms: Option<u64>,
}

impl<'de> Deserialize<'de> for FileInfo {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        FileInfo::try_from(FileInfoIn::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<FileInfoIn> for FileInfo {
    type Error = &'static str;

    fn try_from(f: FileInfoIn) -> Result<FileInfo, &'static str> {
        let mime_type = ALLOWED
            .iter()
            .map(|t| t.mime)
            .find(|m| *m == f.mime_type)
            .ok_or("a type not on the allow-list")?;
        Ok(FileInfo {
            file_id: f.file_id,
            name: f.name,
            size: f.size,
            mime_type,
            category: f.category,
            url: f.url,
            expires_at: f.expires_at,
            duration_ms: f.duration_ms,
        })
    }
}

/// The declared MIME type without parameters, lowercased; `None` when absent or generic.
fn essence(declared: Option<&str>) -> Option<String> {
    let d = declared?.split(';').next()?.trim().to_ascii_lowercase();
    (!d.is_empty() && d != "application/octet-stream").then_some(d)
}

/// The lowercased extension of a (raw or sanitized) name.
fn extension(name: &str) -> Option<String> {
    let base = name.rsplit(['/', '\\']).next()?;
    let (stem, ext) = base.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// Decides what a file is. `bytes` is the whole file, `declared` its part's `Content-Type` and
/// `name` its part's file name. The type is sniffed from the bytes, must be on the allow-list and
/// must agree with the declared type (a missing or `application/octet-stream` declaration is
/// accepted when the name's extension agrees instead).
pub fn classify(bytes: &[u8], declared: Option<&str>, name: &str) -> Result<FileType, SignalError> {
    let declared = essence(declared);
    let ext = extension(name);
    let sniffed = infer::get(bytes).map(|t| t.mime_type());
    // The candidate types of what the bytes are, each with the declared types it may go by.
    let candidates: &[(FileType, &[&str])] = match sniffed {
        Some("image/jpeg") => &[(JPEG, &["image/jpeg", "image/jpg", "image/pjpeg"])],
        Some("image/png") => &[(PNG, &["image/png"])],
        Some("image/gif") => &[(GIF, &["image/gif"])],
        Some("image/webp") => &[(WEBP, &["image/webp"])],
        Some("application/pdf") => &[(PDF, &["application/pdf"])],
        Some("video/mp4" | "audio/m4a") => &[
            (MP4_VIDEO, &["video/mp4"]),
            (MP4_AUDIO, &["audio/mp4", "audio/m4a", "audio/x-m4a"]),
        ],
        Some("video/webm") => &[(WEBM_VIDEO, &["video/webm"]), (WEBM_AUDIO, &["audio/webm"])],
        Some("audio/ogg" | "audio/opus") => &[
            (OGG_AUDIO, &["audio/ogg", "application/ogg", "audio/opus"]),
            (OGG_VIDEO, &["video/ogg"]),
        ],
        Some("audio/mpeg") => &[(MP3, &["audio/mpeg", "audio/mp3"])],
        Some("audio/x-wav") => &[(
            WAV,
            &["audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"],
        )],
        Some(_) => &[],
        None => {
            // Plain text has no magic: a `.txt` name, a text/plain (or no) declaration, UTF-8.
            let looks_textual = ext.as_deref() == Some("txt")
                && declared.as_deref().is_none_or(|d| d == "text/plain")
                && std::str::from_utf8(bytes).is_ok_and(is_plain_text);
            return if looks_textual {
                Ok(TEXT)
            } else {
                Err(SignalError::UnsupportedType)
            };
        }
    };
    candidates
        .iter()
        .find(|(ty, aliases)| match declared.as_deref() {
            Some(d) => aliases.contains(&d),
            None => ext.as_deref().is_some_and(|e| ty.exts.contains(&e)),
        })
        .map(|(ty, _)| *ty)
        .ok_or(SignalError::UnsupportedType)
}

/// Whether UTF-8 text is plain: no control characters but tab, line feed, carriage return and
/// form feed (so no terminal escapes, DEL or C1 controls), and no markup — a `<` followed by a
/// letter, `!`, `?` or `/` — so that neither HTML nor SVG passes as text under any name.
fn is_plain_text(text: &str) -> bool {
    let no_controls = !text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\u{0c}'));
    let no_markup = !text.as_bytes().windows(2).any(|w| {
        w[0] == b'<' && (w[1].is_ascii_alphabetic() || matches!(w[1], b'!' | b'?' | b'/'))
    });
    no_controls && no_markup
}

/// The name a file is shown and downloaded under: the last path segment of `raw`, without
/// control characters, quotes or `\/:*?<>|`, trimmed of dots and spaces, at most
/// [`MAX_NAME_CHARS`] characters, ending in an extension that fits `ty`. Never a storage key.
pub fn sanitize_name(raw: &str, ty: &FileType) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| {
            !c.is_control()
                && !matches!(
                    c,
                    '"' | '\'' | '`' | '\\' | '/' | ':' | '*' | '?' | '<' | '>' | '|' | ';'
                )
                // Bidirectional overrides make `gpj.exe` look like `exe.jpg`.
                && !matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
        })
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    let fits = extension(cleaned).is_some_and(|e| ty.exts.contains(&e.as_str()));
    let suffix = if fits {
        String::new()
    } else {
        format!(".{}", ty.ext)
    };
    let room = MAX_NAME_CHARS - suffix.chars().count();
    let stem: String = if cleaned.chars().count() > room {
        // Keep the fitting extension when cutting a long name.
        match (fits, cleaned.rsplit_once('.')) {
            (true, Some((stem, ext))) => {
                let keep = room.saturating_sub(ext.chars().count() + 1);
                let stem: String = stem.chars().take(keep).collect();
                format!("{}.{ext}", stem.trim_end())
            }
            _ => cleaned.chars().take(room).collect::<String>(),
        }
    } else {
        cleaned.to_owned()
    };
    let stem = stem.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    if stem.is_empty() {
        return format!("file.{}", ty.ext);
    }
    format!("{stem}{suffix}")
}

/// The ASCII form of a name for `Content-Disposition: filename="…"` (the full name travels in
/// `filename*`): non-ASCII characters become `_`.
pub fn ascii_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// RFC 8187 `UTF-8''…` percent-encoding of a name for `filename*`.
pub fn rfc8187(name: &str) -> String {
    let mut out = String::from("UTF-8''");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a `clientId` form value (as for chat messages: 1–64 characters, no control ones).
pub fn valid_client_id(s: &str) -> bool {
    let n = s.chars().count();
    (1..=MAX_CLIENT_ID_CHARS).contains(&n) && !s.chars().any(char::is_control)
}

type HmacSha256 = SimpleHmac<Sha256>;

/// Signs and checks download URLs: HMAC-SHA256 over the file id, its room and the expiry.
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(<redacted>)")
    }
}

impl UrlSigner {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, file: FileId, room: RoomId, exp: u64) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(format!("tandem-file-v1|{file}|{room}|{exp}").as_bytes());
        mac
    }

    /// The hex signature of one file URL.
    pub fn sign(&self, file: FileId, room: RoomId, exp: u64) -> String {
        let tag = self.mac(file, room, exp).finalize().into_bytes();
        tag.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The URL path and query a client downloads from.
    pub fn url(&self, file: FileId, room: RoomId, exp: u64) -> String {
        format!(
            "/api/files/{file}?room={room}&exp={exp}&sig={}",
            self.sign(file, room, exp)
        )
    }

    /// Whether `sig` (hex) signs these values; compared in constant time.
    pub fn verify(&self, file: FileId, room: RoomId, exp: u64, sig: &str) -> bool {
        let Some(bytes) = unhex(sig) else {
            return false;
        };
        self.mac(file, room, exp).verify_slice(&bytes).is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The file object of the wire (`POST /api/files` answer and a file message's `content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    pub file_id: FileId,
    pub name: String,
    pub size: u64,
    pub mime_type: &'static str,
    pub category: Category,
    pub url: String,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn png() -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.resize(64, 0);
        v
    }
    fn pdf() -> Vec<u8> {
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n".to_vec()
    }
    fn ogg() -> Vec<u8> {
        let mut v = b"OggS\0\x02".to_vec();
        v.resize(64, 0);
        v
    }
    fn webm() -> Vec<u8> {
        let mut v = vec![0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81, 0x01];
        v.extend_from_slice(b"\x42\x82\x84webm");
        v.resize(400, 0);
        v
    }

    #[test]
    fn allow_list_and_declared_types() {
        assert_eq!(classify(&png(), Some("image/png"), "a.png"), Ok(PNG));
        assert_eq!(classify(&png(), Some("IMAGE/PNG; x=y"), "a"), Ok(PNG));
        assert_eq!(classify(&pdf(), Some("application/pdf"), "d.pdf"), Ok(PDF));
        assert_eq!(
            classify(&webm(), Some("audio/webm;codecs=opus"), "voice.webm"),
            Ok(WEBM_AUDIO)
        );
        assert_eq!(
            classify(&webm(), Some("video/webm"), "v.webm"),
            Ok(WEBM_VIDEO)
        );
        assert_eq!(classify(&ogg(), Some("audio/ogg"), "v.ogg"), Ok(OGG_AUDIO));
        // A generic declaration is accepted when the extension agrees.
        assert_eq!(
            classify(&png(), Some("application/octet-stream"), "a.PNG"),
            Ok(PNG)
        );
        assert_eq!(classify(&png(), None, "a.png"), Ok(PNG));
        assert_eq!(
            classify(&png(), None, "a.pdf"),
            Err(SignalError::UnsupportedType)
        );
        // A PNG declared as a PDF.
        assert_eq!(
            classify(&png(), Some("application/pdf"), "a.pdf"),
            Err(SignalError::UnsupportedType)
        );
    }

    #[test]
    fn html_svg_and_text() {
        let html = b"<!DOCTYPE html><html><script>alert(1)</script></html>";
        assert_eq!(
            classify(html, Some("image/png"), "x.png"),
            Err(SignalError::UnsupportedType)
        );
        assert_eq!(
            classify(html, Some("text/plain"), "x.txt"),
            Err(SignalError::UnsupportedType)
        );
        let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script/></svg>";
        assert_eq!(
            classify(svg, Some("image/svg+xml"), "x.svg"),
            Err(SignalError::UnsupportedType)
        );
        let xml_svg = b"<?xml version=\"1.0\"?><svg/>";
        assert_eq!(
            classify(xml_svg, Some("text/plain"), "x.txt"),
            Err(SignalError::UnsupportedType)
        );
        assert_eq!(
            classify("héllo\nworld\n".as_bytes(), Some("text/plain"), "n.txt"),
            Ok(TEXT)
        );
        assert_eq!(
            classify(b"hello", Some("text/plain"), "n.md"),
            Err(SignalError::UnsupportedType)
        );
        assert_eq!(
            classify(b"\xff\xfe bad", Some("text/plain"), "n.txt"),
            Err(SignalError::UnsupportedType)
        );
        for bad in [
            "a\0b",
            "a\x7fb",
            "a\u{9b}31mred",
            "a\u{85}b",
            "<svg xmlns=\"http://www.w3.org/2000/svg\"><script/></svg>",
            "hi <img src=x onerror=alert(1)>",
            "</p>",
            "<!-- x -->",
        ] {
            assert_eq!(
                classify(bad.as_bytes(), Some("text/plain"), "n.txt"),
                Err(SignalError::UnsupportedType),
                "{bad:?}"
            );
            assert_eq!(
                classify(bad.as_bytes(), Some("application/octet-stream"), "n.txt"),
                Err(SignalError::UnsupportedType),
                "{bad:?}"
            );
        }
        for good in [
            "a < b and c > d\r\n",
            "tab\there\x0cpage",
            "1<2",
            "<3 love",
            "x <= y",
        ] {
            assert_eq!(
                classify(good.as_bytes(), Some("text/plain"), "n.txt"),
                Ok(TEXT),
                "{good:?}"
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            sanitize_name("../../etc/pa\"ss<wd>.png", &PNG),
            "passwd.png"
        );
        assert_eq!(sanitize_name("C:\\Users\\x\\photo.PNG", &PNG), "photo.PNG");
        assert_eq!(sanitize_name("photo", &PNG), "photo.png");
        assert_eq!(sanitize_name("photo.pdf", &PNG), "photo.pdf.png");
        assert_eq!(sanitize_name("", &PNG), "file.png");
        assert_eq!(sanitize_name("...", &PNG), "file.png");
        assert_eq!(sanitize_name(".png", &PNG), "png.png");
        assert_eq!(sanitize_name("a\u{202e}gnp.exe", &PNG), "agnp.exe.png");
        assert_eq!(sanitize_name("bad\r\nname.txt", &TEXT), "badname.txt");
        let long = format!("{}.png", "é".repeat(300));
        let s = sanitize_name(&long, &PNG);
        assert_eq!(s.chars().count(), MAX_NAME_CHARS);
        assert!(s.ends_with(".png"));
        assert_eq!(ascii_name("résumé.pdf"), "r_sum_.pdf");
        assert_eq!(rfc8187("a b.pdf"), "UTF-8''a%20b.pdf");
        assert_eq!(rfc8187("é"), "UTF-8''%C3%A9");
    }

    #[test]
    fn signatures() {
        let s = UrlSigner::new(b"k");
        let (f, r) = (FileId::from_raw(7), RoomId::from_raw(9));
        let sig = s.sign(f, r, 100);
        assert_eq!(sig.len(), 64);
        assert!(s.verify(f, r, 100, &sig));
        assert!(s.verify(f, r, 100, &sig.to_uppercase()));
        assert!(!s.verify(f, r, 101, &sig));
        assert!(!s.verify(FileId::from_raw(8), r, 100, &sig));
        assert!(!s.verify(f, RoomId::from_raw(8), 100, &sig));
        assert!(!UrlSigner::new(b"other").verify(f, r, 100, &sig));
        assert!(!s.verify(f, r, 100, &sig[..62]));
        assert!(!s.verify(f, r, 100, "zz"));
        assert!(!s.verify(f, r, 100, &format!("{}é", &sig[..62])));
        let url = s.url(f, r, 100);
        assert!(url.starts_with(&format!("/api/files/{f}?room={r}&exp=100&sig=")));
    }

    proptest! {
        #[test]
        fn classify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                 declared in proptest::option::of(".{0,40}"),
                                 name in ".{0,60}") {
            let _ = classify(&bytes, declared.as_deref(), &name);
        }

        #[test]
        fn sanitized_names_are_safe(raw in ".{0,300}") {
            for ty in [PNG, TEXT, WEBM_AUDIO] {
                let s = sanitize_name(&raw, &ty);
                prop_assert!(!s.is_empty());
                prop_assert!(s.chars().count() <= MAX_NAME_CHARS);
                prop_assert!(!s.chars().any(|c| c.is_control() || "\"\\/:*?<>|;'`".contains(c)));
                let ext = extension(&s);
                prop_assert!(ext.is_some_and(|e| ty.exts.contains(&e.as_str())), "{}", s);
                prop_assert!(!s.starts_with('.'));
                let a = ascii_name(&s);
                prop_assert!(a.bytes().all(|b| (0x20..0x7f).contains(&b)));
            }
        }

        #[test]
        fn signature_checks_never_panic(sig in ".{0,80}") {
            let s = UrlSigner::new(b"k");
            let _ = s.verify(FileId::from_raw(1), RoomId::from_raw(2), 3, &sig);
        }
    }
}
