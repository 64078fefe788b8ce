//! Entry points for the fuzz targets in `fuzz/` into the shell's private modules; compiled
//! only with the `fuzzing` feature. Each runs the production code path, not a copy of it.

use std::cell::RefCell;
use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue};
use tandem_signaling::{FileId, RoomId, SignalError};

use crate::files::fuzz_hooks;

/// The file-URL query parser of `GET /api/files/{id}`: `room`, `exp` and `sig`, or `None`
/// when a parameter repeats.
pub fn parse_file_url_query(query: &str) -> Option<[Option<&str>; 3]> {
    fuzz_hooks::url_query(query)
}

/// A download URL's path id and query read into what its signature covers (file, room,
/// expiry) and the signature; malformed parts are `invalid_signature`.
pub fn parse_file_url<'a>(
    id: &str,
    query: &'a str,
) -> Result<(FileId, RoomId, u64, &'a str), SignalError> {
    fuzz_hooks::signed_url(id, query)
}

/// The limits of the store an upload is read against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadLimits {
    pub max_size: u64,
    pub storage_budget: u64,
    pub max_voice_ms: u64,
}

/// The request of an upload: what `POST /api/files` reads besides the authorization.
#[derive(Debug, Clone, Default)]
pub struct UploadRequest {
    /// `Content-Type` (not sent if it is not a valid header value).
    pub content_type: Option<Vec<u8>>,
    /// `Content-Length` (likewise).
    pub content_length: Option<Vec<u8>>,
    /// The body as it arrives, chunk by chunk.
    pub chunks: Vec<Vec<u8>>,
    /// The connection fails after the last chunk instead of ending the body.
    pub fail_at_end: bool,
}

/// An upload the checks accepted.
pub use crate::files::fuzz_hooks::Checked as Upload;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    static STORES: RefCell<HashMap<UploadLimits, std::rc::Rc<crate::files::Files>>> =
        RefCell::new(HashMap::new());
}

/// Reads and checks an upload's multipart body as the upload handler does (streamed through
/// `multer`, size limits, storage reservation, the form's fields, the file's type, voice
/// limits, the sanitized name), stopping where the handler would store it.
///
/// Panics if a reservation outlives the upload (bytes not given back to the budget).
pub fn multipart_upload(limits: UploadLimits, req: UploadRequest) -> Result<Upload, SignalError> {
    let files = STORES.with(|s| {
        s.borrow_mut()
            .entry(limits)
            .or_insert_with(|| {
                std::rc::Rc::new(fuzz_hooks::files(
                    limits.max_size,
                    limits.storage_budget,
                    limits.max_voice_ms,
                ))
            })
            .clone()
    });
    let mut headers = HeaderMap::new();
    if let Some(v) = req
        .content_type
        .and_then(|v| HeaderValue::from_bytes(&v).ok())
    {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Some(v) = req
        .content_length
        .and_then(|v| HeaderValue::from_bytes(&v).ok())
    {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    let fail = req.fail_at_end;
    let chunks = req
        .chunks
        .into_iter()
        .map(|c| Ok::<_, std::io::Error>(Bytes::from(c)))
        .chain(fail.then(|| Err(std::io::Error::other("connection reset"))));
    let mut body = Body::from_stream(futures_util::stream::iter(chunks)).into_data_stream();
    let result =
        RUNTIME.with(|rt| rt.block_on(fuzz_hooks::upload_form(&files, &headers, &mut body)));
    assert_eq!(
        fuzz_hooks::used(&files),
        0,
        "an upload's reservation was not given back to the storage budget"
    );
    result
}
