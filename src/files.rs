//! Shared files: `POST /api/files` streams a multipart upload into storage (memory, or a
//! directory with `--file-dir`), the hub posts it into the chat, and `GET`/`HEAD` on its signed
//! URL serves it to the chat's two guests. Files go when their chat ends (the hub calls
//! [`Files::delete_room`]) or their lifetime runs out ([`Files::sweep`]). What a file is and how
//! its URL is signed is decided by `tandem_signaling::files`; this module does the I/O.

use std::collections::{BTreeSet, HashMap};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rand::RngCore;
use tandem_signaling::files::{
    ascii_name, classify, rfc8187, sanitize_name, valid_client_id, Category, FileInfo, FileType,
    UrlSigner,
};
use tandem_signaling::{FileId, RoomId, SessionId, SignalError};

use crate::auth::bearer;
use crate::http::ApiError;
use crate::App;

/// Room for the multipart framing and the small fields around the file.
const FORM_OVERHEAD: u64 = 64 * 1024;
/// Longest value of a small form field (`kind`, `durationMs`, `clientId`), in bytes.
const MAX_FIELD_BYTES: usize = 256;
/// After refusing an upload whose body is not fully read, this much more of it is read and
/// thrown away (for at most [`LINGER_TIME`]) before the connection is dropped: a client still
/// sending gets to read the refusal instead of a connection reset.
const LINGER_BYTES: u64 = 16 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(10);
/// Prefix of every file tandem writes into `--file-dir`; only these are removed at start.
const DISK_PREFIX: &str = "tandem-file-";

/// The file settings, from the config.
pub struct FileSettings {
    pub max_size: u64,
    pub ttl: Duration,
    pub uploads_per_min: u32,
    pub bytes_per_hour: u64,
    pub storage_budget: u64,
    pub dir: Option<PathBuf>,
    pub max_voice_ms: u64,
    /// Key of the URL signatures.
    pub key: Vec<u8>,
}

/// Where file bytes live: the storage interface. The index (rooms, guests, expiry, budget) is
/// the same for every backend; a backend only puts, reads and removes bytes.
enum Storage {
    /// In this process's memory (the default).
    Memory,
    /// As files named `tandem-file-<id>` in a directory (`--file-dir`).
    Disk(PathBuf),
}

/// A handle to one file's bytes in a [`Storage`].
#[derive(Clone)]
enum Data {
    Memory(Bytes),
    Disk(PathBuf),
}

impl Storage {
    fn open(dir: Option<PathBuf>) -> anyhow::Result<Storage> {
        Ok(match dir {
            None => Storage::Memory,
            Some(dir) => {
                clear_leftovers(&dir)?;
                Storage::Disk(dir)
            }
        })
    }

    async fn put(&self, id: FileId, bytes: Bytes) -> std::io::Result<Data> {
        match self {
            Storage::Memory => Ok(Data::Memory(bytes)),
            Storage::Disk(dir) => {
                let path = dir.join(format!("{DISK_PREFIX}{id}"));
                if let Err(e) = tokio::fs::write(&path, &bytes).await {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(e);
                }
                Ok(Data::Disk(path))
            }
        }
    }
}

impl Data {
    async fn read(self) -> std::io::Result<Bytes> {
        match self {
            Data::Memory(b) => Ok(b),
            Data::Disk(path) => tokio::fs::read(&path).await.map(Bytes::from),
        }
    }

    /// Frees the bytes; a file on disk is removed in the background.
    fn remove(self) {
        if let Data::Disk(path) = self {
            tokio::spawn(async move {
                if let Err(e) = tokio::fs::remove_file(&path).await {
                    tracing::warn!(path = %path.display(), error = %e, "removing a shared file failed");
                }
            });
        }
    }
}

struct Stored {
    room: RoomId,
    guests: [SessionId; 2],
    name: String,
    mime: &'static str,
    category: Category,
    size: u64,
    expires: Instant,
    data: Data,
}

#[derive(Default)]
struct Index {
    files: HashMap<FileId, Stored>,
    by_room: HashMap<RoomId, Vec<FileId>>,
    by_expiry: BTreeSet<(Instant, FileId)>,
    /// Bytes of the files in `files`.
    bytes: u64,
}

/// The file store and its limits. One per process, shared by the HTTP handlers and the hub.
pub struct Files {
    max_size: u64,
    ttl: Duration,
    max_voice_ms: u64,
    budget: u64,
    /// Bytes stored plus bytes reserved by uploads in flight.
    used: AtomicU64,
    storage: Storage,
    signer: UrlSigner,
    index: Mutex<Index>,
    attempts: DefaultKeyedRateLimiter<SessionId>,
    /// Accepted bytes per guest, in KiB cells.
    volume: DefaultKeyedRateLimiter<SessionId>,
    metrics: FileMetrics,
}

fn nonzero(n: u64) -> NonZeroU32 {
    NonZeroU32::new(n.clamp(1, u32::MAX as u64) as u32).expect("clamped to at least 1")
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Bytes held against the storage budget while an upload streams in; given back on drop unless
/// the file was stored.
struct Reservation<'a> {
    files: &'a Files,
    bytes: u64,
}

impl Reservation<'_> {
    fn grow(&mut self, n: u64) -> Result<(), SignalError> {
        let budget = self.files.budget;
        self.files
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= budget)
            })
            .map_err(|_| SignalError::StorageFull)?;
        self.bytes += n;
        Ok(())
    }

    /// The bytes now belong to a stored file.
    fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.files.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// A file about to be stored.
struct NewFile {
    id: FileId,
    room: RoomId,
    guests: [SessionId; 2],
    name: String,
    ty: FileType,
    bytes: Bytes,
}

/// What an upload's form held.
struct Form {
    bytes: Bytes,
    declared: Option<String>,
    name: String,
    voice: bool,
    duration_ms: Option<u64>,
    client_id: Option<String>,
}

impl Files {
    pub fn new(s: FileSettings, metrics: FileMetrics) -> anyhow::Result<Self> {
        let volume_kib = s.bytes_per_hour.div_ceil(1024);
        Ok(Files {
            max_size: s.max_size,
            ttl: s.ttl,
            max_voice_ms: s.max_voice_ms,
            budget: s.storage_budget,
            used: AtomicU64::new(0),
            storage: Storage::open(s.dir)?,
            signer: UrlSigner::new(&s.key),
            index: Mutex::new(Index::default()),
            attempts: RateLimiter::keyed(Quota::per_minute(nonzero(s.uploads_per_min.into()))),
            volume: RateLimiter::keyed(
                Quota::with_period(Duration::from_secs(3600) / nonzero(volume_kib).get())
                    .expect("a positive period")
                    .allow_burst(nonzero(volume_kib)),
            ),
            metrics,
        })
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // A panic while holding the lock leaves the index consistent enough to go on with.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_gauges(&self, index: &Index) {
        self.metrics.stored_files.set(index.files.len() as i64);
        self.metrics.stored_bytes.set(index.bytes as i64);
    }

    /// Takes files out of the index and gives their bytes back to the budget; files on disk
    /// are removed in the background.
    fn forget(&self, index: &mut Index, ids: impl IntoIterator<Item = FileId>) -> usize {
        let mut n = 0;
        for id in ids {
            let Some(f) = index.files.remove(&id) else {
                continue;
            };
            n += 1;
            index.bytes -= f.size;
            index.by_expiry.remove(&(f.expires, id));
            if let Some(list) = index.by_room.get_mut(&f.room) {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    index.by_room.remove(&f.room);
                }
            }
            self.used.fetch_sub(f.size, Ordering::AcqRel);
            f.data.remove();
        }
        self.set_gauges(index);
        n
    }

    /// Deletes every file of a chat that ended.
    pub fn delete_room(&self, room: RoomId) {
        let mut index = self.index();
        let Some(ids) = index.by_room.get(&room).cloned() else {
            return;
        };
        let n = self.forget(&mut index, ids);
        self.metrics
            .deleted
            .with_label_values(&["chat_ended"])
            .inc_by(n as u64);
    }

    /// Deletes files whose lifetime ran out, and forgets idle rate-limit keys.
    pub fn sweep(&self, now: Instant) {
        let mut index = self.index();
        let due: Vec<FileId> = index
            .by_expiry
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| *id)
            .collect();
        if !due.is_empty() {
            let n = self.forget(&mut index, due) as u64;
            self.metrics.expirations.inc_by(n);
            self.metrics
                .deleted
                .with_label_values(&["expired"])
                .inc_by(n);
        }
        drop(index);
        self.attempts.retain_recent();
        self.volume.retain_recent();
    }

    /// Every stored file and how long it still lives (for a cluster that must record where
    /// they are again).
    pub fn stored(&self, now: Instant) -> Vec<(FileId, Duration)> {
        self.index()
            .by_expiry
            .iter()
            .filter(|(t, _)| *t > now)
            .map(|(t, id)| (*id, *t - now))
            .collect()
    }

    /// When the next file expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.index().by_expiry.first().map(|(t, _)| *t)
    }

    fn retry_after(
        &self,
        not_until: governor::NotUntil<governor::clock::QuantaInstant>,
    ) -> ApiError {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::rate_limited(crate::limits::RetryAfter(wait))
    }

    /// Reads the multipart form, streaming the file part into memory (reserved against the
    /// storage budget) and cutting it off past the size limit.
    async fn read_form(
        &self,
        headers: &HeaderMap,
        body: &mut BodyDataStream,
        reservation: &mut Reservation<'_>,
    ) -> Result<Form, SignalError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .ok_or(SignalError::InvalidUpload)?;
        let boundary =
            multer::parse_boundary(content_type).map_err(|_| SignalError::InvalidUpload)?;
        let constraints = multer::Constraints::new()
            .size_limit(multer::SizeLimit::new().whole_stream(self.max_size + FORM_OVERHEAD));
        let size_hint = content_length(headers).unwrap_or(0);
        let mut form = multer::Multipart::with_constraints(body, boundary, constraints);
        let multipart_error = |e: multer::Error| match e {
            multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
                SignalError::FileTooLarge
            }
            _ => SignalError::InvalidUpload,
        };
        let mut file: Option<(Bytes, Option<String>, String)> = None;
        let (mut kind, mut duration, mut client_id) = (None, None, None);
        while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or("").to_owned();
            if name == "file" {
                if file.is_some() {
                    return Err(SignalError::InvalidUpload);
                }
                let declared = field.content_type().map(|m| m.to_string());
                let file_name = field.file_name().unwrap_or("").to_owned();
                // Sized from the request's length (bounded by the limit) so a stored file does
                // not keep a doubled buffer's spare half.
                let mut buf = Vec::with_capacity(size_hint.min(self.max_size) as usize);
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    let len = chunk.len() as u64;
                    if buf.len() as u64 + len > self.max_size {
                        return Err(SignalError::FileTooLarge);
                    }
                    reservation.grow(len)?;
                    buf.extend_from_slice(&chunk);
                }
                if buf.capacity() - buf.len() > buf.len() / 16 {
                    buf.shrink_to_fit();
                }
                file = Some((Bytes::from(buf), declared, file_name));
                continue;
            }
            let slot = match name.as_str() {
                "kind" => &mut kind,
                "durationMs" => &mut duration,
                "clientId" => &mut client_id,
                _ => return Err(SignalError::InvalidUpload),
            };
            if slot.is_some() {
                return Err(SignalError::InvalidUpload);
            }
            let mut value = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                if value.len() + chunk.len() > MAX_FIELD_BYTES {
                    return Err(SignalError::InvalidUpload);
                }
                value.extend_from_slice(&chunk);
            }
            *slot = Some(String::from_utf8(value).map_err(|_| SignalError::InvalidUpload)?);
        }
        let (bytes, declared, name) = file.ok_or(SignalError::InvalidUpload)?;
        if bytes.is_empty() {
            return Err(SignalError::InvalidUpload);
        }
        let voice = match kind.as_deref() {
            None | Some("file") => false,
            Some("voice") => true,
            Some(_) => return Err(SignalError::InvalidUpload),
        };
        let duration_ms = match (voice, duration) {
            (true, Some(d)) => match d.trim().parse::<u64>() {
                Ok(ms) if ms > 0 => Some(ms),
                _ => return Err(SignalError::InvalidUpload),
            },
            (true, None) => return Err(SignalError::InvalidUpload),
            (false, Some(_)) => return Err(SignalError::InvalidUpload),
            (false, None) => None,
        };
        if client_id.as_deref().is_some_and(|c| !valid_client_id(c)) {
            return Err(SignalError::InvalidUpload);
        }
        Ok(Form {
            bytes,
            declared,
            name,
            voice,
            duration_ms,
            client_id,
        })
    }

    /// Reads the form ([`Files::read_form`]) and decides what its file is: sniffed type,
    /// and for a voice note an audio type within the longest duration. `category` is set as
    /// soon as the type is known (for the refusal's metric label).
    async fn read_checked_form(
        &self,
        headers: &HeaderMap,
        body: &mut BodyDataStream,
        reservation: &mut Reservation<'_>,
        category: &mut Option<Category>,
    ) -> Result<(Form, FileType), SignalError> {
        let form = self.read_form(headers, body, reservation).await?;
        let ty = classify(&form.bytes, form.declared.as_deref(), &form.name)?;
        *category = Some(ty.category);
        if form.voice {
            if ty.category != Category::Audio {
                return Err(SignalError::UnsupportedType);
            }
            if form.duration_ms.is_some_and(|d| d > self.max_voice_ms) {
                return Err(SignalError::VoiceTooLong);
            }
        }
        Ok((form, ty))
    }

    /// Keeps a file (its bytes already reserved); answers the Unix second it expires.
    async fn store(&self, new: NewFile) -> Result<u64, ApiError> {
        let NewFile {
            id,
            room,
            guests,
            name,
            ty,
            bytes,
        } = new;
        let size = bytes.len() as u64;
        let data = self.storage.put(id, bytes).await.map_err(|e| {
            tracing::error!(file = %id, error = %e, "storing a shared file failed");
            ApiError::from(SignalError::StorageFull)
        })?;
        let now = Instant::now();
        let expires = now + self.ttl;
        let exp_unix = unix_secs() + self.ttl.as_secs();
        let mut index = self.index();
        index.files.insert(
            id,
            Stored {
                room,
                guests,
                name,
                mime: ty.mime,
                category: ty.category,
                size,
                expires,
                data,
            },
        );
        index.by_room.entry(room).or_default().push(id);
        index.by_expiry.insert((expires, id));
        index.bytes += size;
        self.set_gauges(&index);
        Ok(exp_unix)
    }

    /// Removes a file that was stored but could not be posted into its chat.
    fn unsend(&self, id: FileId) {
        let mut index = self.index();
        let n = self.forget(&mut index, [id]);
        self.metrics
            .deleted
            .with_label_values(&["unsent"])
            .inc_by(n as u64);
    }
}

/// The request's declared body length, if it has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Removes what an earlier run left in the file directory (only tandem's own files).
fn clear_leftovers(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the file directory {}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(DISK_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The upload outcome label of a refusal.
fn upload_outcome(e: SignalError) -> &'static str {
    match e {
        SignalError::Unauthorized => "unauthorized",
        SignalError::RateLimited => "rate_limited",
        SignalError::NotInChat => "not_in_chat",
        SignalError::FileTooLarge => "too_large",
        SignalError::InvalidUpload => "invalid_upload",
        SignalError::UnsupportedType => "unsupported_type",
        SignalError::VoiceTooLong => "voice_too_long",
        SignalError::StorageFull => "storage_full",
        SignalError::PartnerAwayQueueFull => "partner_away_queue_full",
        _ => "error",
    }
}

/// `GET /api/limits`: what a client should know before it uploads.
pub async fn limits(State(app): State<Arc<App>>) -> Response {
    let f = &app.files;
    Json(serde_json::json!({
        "maxFileSize": f.max_size,
        "maxVoiceMs": f.max_voice_ms,
        "fileTtl": f.ttl.as_secs(),
    }))
    .into_response()
}

/// `POST /api/files`.
pub async fn upload(State(app): State<Arc<App>>, req: Request) -> Response {
    let files = &app.files;
    let (parts, body) = req.into_parts();
    let mut body = body.into_data_stream();
    let mut category = None;
    let result = upload_inner(&app, &parts.headers, &mut body, &mut category).await;
    let cat = category.map_or("unknown", Category::as_str);
    match result {
        Ok(res) => {
            files.metrics.uploads.with_label_values(&[cat, "ok"]).inc();
            res
        }
        Err((code, e)) => {
            files
                .metrics
                .uploads
                .with_label_values(&[cat, upload_outcome(code)])
                .inc();
            tokio::spawn(linger(body));
            e.into_response()
        }
    }
}

/// Reads and discards what is left of a refused upload's body, bounded in bytes and time.
async fn linger(mut body: BodyDataStream) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len() as u64;
            if read > LINGER_BYTES {
                break;
            }
        }
    })
    .await;
}

async fn upload_inner(
    app: &App,
    headers: &HeaderMap,
    body: &mut BodyDataStream,
    category: &mut Option<Category>,
) -> Result<Response, (SignalError, ApiError)> {
    let refuse = |e: SignalError| (e, ApiError::from(e));
    let files = &app.files;
    let (session, username, token_exp_ms) = bearer(headers.get(header::AUTHORIZATION))
        .and_then(|t| app.tokens.verify_named(t))
        .ok_or_else(|| refuse(SignalError::Unauthorized))?;
    if let Err(not_until) = files.attempts.check_key(&session) {
        return Err((SignalError::RateLimited, files.retry_after(not_until)));
    }
    if app.draining.load(Ordering::Relaxed) {
        return Err(refuse(SignalError::ServerBusy));
    }
    // In a cluster the guest may be made or connected elsewhere (its chat homed elsewhere).
    crate::http::adopt(app, session, username, token_exp_ms)
        .await
        .map_err(refuse)?;
    let (room, partner) = app.hub.chat_of(session).await.map_err(refuse)?;
    if content_length(headers).is_some_and(|n| n > files.max_size + FORM_OVERHEAD) {
        return Err(refuse(SignalError::FileTooLarge));
    }
    let mut reservation = Reservation { files, bytes: 0 };
    let (form, ty) = files
        .read_checked_form(headers, body, &mut reservation, category)
        .await
        .map_err(refuse)?;
    let size = form.bytes.len() as u64;
    match files
        .volume
        .check_key_n(&session, nonzero(size.div_ceil(1024)))
    {
        Ok(Ok(())) => {}
        Ok(Err(not_until)) => {
            return Err((SignalError::RateLimited, files.retry_after(not_until)));
        }
        Err(_) => return Err(refuse(SignalError::FileTooLarge)),
    }
    let name = sanitize_name(&form.name, &ty);
    let id = FileId::from_raw(u128::from_le_bytes({
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        b
    }));
    let exp = files
        .store(NewFile {
            id,
            room,
            guests: [session, partner],
            name: name.clone(),
            ty,
            bytes: form.bytes,
        })
        .await
        .map_err(|e| (SignalError::StorageFull, e))?;
    reservation.keep();
    if let Some(cluster) = &app.cluster {
        // Other nodes fetch it from here (a guest's downloads may land on any node).
        let ttl = Duration::from_secs(exp.saturating_sub(unix_secs()).max(1));
        if let Err(f) = cluster.file_stored(id, ttl).await {
            tracing::warn!(error = %f, "where a file is stored could not be recorded: only this node serves it");
        }
    }
    let info = FileInfo {
        file_id: id,
        name,
        size,
        mime_type: ty.mime,
        category: ty.category,
        url: files.signer.url(id, room, exp),
        expires_at: rfc3339(exp),
        duration_ms: form.duration_ms.filter(|_| form.voice),
    };
    let client_id = form.client_id.unwrap_or_else(|| id.to_string());
    match app
        .hub
        .post_file(session, room, client_id, info.clone())
        .await
    {
        Ok((message_id, timestamp)) => {
            files.metrics.upload_bytes.inc_by(size);
            let mut body = serde_json::to_value(&info).unwrap_or_default();
            if let Some(o) = body.as_object_mut() {
                o.insert("messageId".into(), message_id.to_string().into());
                o.insert("timestamp".into(), timestamp.into());
            }
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        Err(e) => {
            files.unsend(id);
            Err(refuse(e))
        }
    }
}

/// The signed parameters of a file URL. Read by hand rather than by an extractor so that a
/// malformed query (a repeated parameter, say) is `invalid_signature` after the token check,
/// like any other bad URL, and never a framework error.
#[derive(Default)]
struct UrlParams<'a> {
    room: Option<&'a str>,
    exp: Option<&'a str>,
    sig: Option<&'a str>,
}

impl<'a> UrlParams<'a> {
    /// `None` when a parameter repeats. Unknown parameters are ignored; values are hex or
    /// digits, so nothing needs percent-decoding (an encoded value simply fails the check).
    fn parse(query: &'a str) -> Option<Self> {
        let mut p = UrlParams::default();
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "room" => &mut p.room,
                "exp" => &mut p.exp,
                "sig" => &mut p.sig,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        Some(p)
    }
}

/// A file URL's path id and query read into the values its signature covers, and the
/// signature; any malformed part is `invalid_signature`.
fn signed_url<'a>(id: &str, query: &'a str) -> Result<(FileId, RoomId, u64, &'a str), SignalError> {
    let params = UrlParams::parse(query).ok_or(SignalError::InvalidSignature)?;
    let id = FileId::parse(id).ok_or(SignalError::InvalidSignature)?;
    let room = params
        .room
        .and_then(RoomId::parse)
        .ok_or(SignalError::InvalidSignature)?;
    let exp = params
        .exp
        .filter(|e| e.len() <= 20 && e.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|e| e.parse::<u64>().ok())
        .ok_or(SignalError::InvalidSignature)?;
    let sig = params.sig.ok_or(SignalError::InvalidSignature)?;
    Ok((id, room, exp, sig))
}

/// `GET` / `HEAD` `/api/files/{id}`.
pub async fn download(
    State(app): State<Arc<App>>,
    method: Method,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let outcome = |e: SignalError| match e {
        SignalError::Unauthorized => "unauthorized",
        SignalError::InvalidSignature => "invalid_signature",
        SignalError::Expired => "expired",
        SignalError::NotFound => "not_found",
        SignalError::Forbidden => "forbidden",
        _ => "error",
    };
    let query = query.unwrap_or_default();
    let mut result = download_inner(&app, method == Method::HEAD, &id, &query, &headers).await;
    if let (Err(SignalError::NotFound), Some(cluster)) = (&result, &app.cluster) {
        // Stored on another node (and never fetched again from there by that node).
        if !headers.contains_key(FORWARDED_HEADER) {
            if let Some(res) = fetch_elsewhere(cluster, &method, &id, &query, &headers).await {
                // The storing node checked the token and the URL again: its refusal is ours.
                result = match res.status() {
                    s if s.is_success() => Ok(res),
                    StatusCode::UNAUTHORIZED => Err(SignalError::Unauthorized),
                    StatusCode::FORBIDDEN => Err(SignalError::Forbidden),
                    StatusCode::GONE => Err(SignalError::Expired),
                    StatusCode::BAD_REQUEST => Err(SignalError::InvalidSignature),
                    _ => Err(SignalError::NotFound),
                };
            }
        }
    }
    match result {
        Ok(res) => {
            app.files.metrics.downloads.with_label_values(&["ok"]).inc();
            res
        }
        Err(e) => {
            app.files
                .metrics
                .downloads
                .with_label_values(&[outcome(e)])
                .inc();
            ApiError::from(e).into_response()
        }
    }
}

/// Marks a download fetched from the storing node by another node (never fetched on).
const FORWARDED_HEADER: &str = "x-tandem-forwarded";

/// How long a node waits for the storing node's answer to begin.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A file not stored here, fetched from the node that stores it (the same signed URL and the
/// guest's token: that node checks them again); `None` when no live node has it.
async fn fetch_elsewhere(
    cluster: &crate::cluster::Cluster,
    method: &Method,
    id: &str,
    query: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    let file = FileId::parse(id)?;
    let addr = cluster.file_owner(file).await.ok()??;
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::builder()
            .method(method.clone())
            .uri(format!("/api/files/{file}?{query}"))
            .header(header::HOST, addr.to_string())
            .header(FORWARDED_HEADER, "1");
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let req = req.body(Body::empty()).ok()?;
        let res = sender.send_request(req).await.ok()?;
        Some(res.map(Body::new))
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch).await.ok()?
}

async fn download_inner(
    app: &App,
    head: bool,
    id: &str,
    query: &str,
    headers: &HeaderMap,
) -> Result<Response, SignalError> {
    let files = &app.files;
    let session = bearer(headers.get(header::AUTHORIZATION))
        .and_then(|t| app.tokens.verify(t))
        .ok_or(SignalError::Unauthorized)?;
    let (id, room, exp, sig) = signed_url(id, query)?;
    if !files.signer.verify(id, room, exp, sig) {
        return Err(SignalError::InvalidSignature);
    }
    if exp <= unix_secs() {
        return Err(SignalError::Expired);
    }
    let (data, name, mime, category, size) = {
        let index = files.index();
        let f = index.files.get(&id).ok_or(SignalError::NotFound)?;
        if f.room != room {
            return Err(SignalError::NotFound);
        }
        if !f.guests.contains(&session) {
            return Err(SignalError::Forbidden);
        }
        (f.data.clone(), f.name.clone(), f.mime, f.category, f.size)
    };
    let body = match (head, data) {
        (true, _) => Body::empty(),
        (false, data) => match data.read().await {
            Ok(b) => Body::from(b),
            // Deleted between the lookup and the read: the chat just ended.
            Err(_) => return Err(SignalError::NotFound),
        },
    };
    let disposition = format!(
        "{}; filename=\"{}\"; filename*={}",
        if category == Category::Image {
            "inline"
        } else {
            "attachment"
        },
        ascii_name(&name),
        rfc8187(&name)
    );
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition)
            .unwrap_or_else(|_| HeaderValue::from_static("attachment")),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-store"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Ok(res)
}

/// Deletes expired files as they come due (at least once a second, for the rate-limit keys).
pub async fn sweeper(files: Arc<Files>) {
    loop {
        let now = Instant::now();
        let next = files
            .next_expiry()
            .unwrap_or(now + Duration::from_secs(1))
            .min(now + Duration::from_secs(1))
            .max(now + Duration::from_millis(50));
        tokio::time::sleep_until(tokio::time::Instant::from_std(next)).await;
        files.sweep(Instant::now());
    }
}

/// What the fuzz targets reach of this module (through `crate::fuzzing`): the production code
/// paths themselves, without an `App`.
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_hooks {
    use super::*;

    /// An upload that passed every check of the form.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Checked {
        pub ty: FileType,
        /// The sanitized name it would be stored under.
        pub name: String,
        pub size: usize,
        pub voice: bool,
        pub duration_ms: Option<u64>,
        pub client_id: Option<String>,
        /// Bytes reserved against the storage budget while it was read.
        pub reserved: u64,
    }

    /// A store in memory with these limits (generous rate limits: the form is what is fuzzed).
    pub fn files(max_size: u64, storage_budget: u64, max_voice_ms: u64) -> Files {
        let registry = prometheus::Registry::new();
        Files::new(
            FileSettings {
                max_size,
                ttl: Duration::from_secs(60),
                uploads_per_min: 1000,
                bytes_per_hour: 1 << 30,
                storage_budget,
                dir: None,
                max_voice_ms,
                key: b"fuzz".to_vec(),
            },
            FileMetrics::register(&registry),
        )
        .expect("an in-memory store needs no directory")
    }

    /// Bytes stored plus reserved by uploads in flight.
    pub fn used(files: &Files) -> u64 {
        files.used.load(Ordering::Acquire)
    }

    /// The upload handler's reading and checking of a body: [`Files::read_checked_form`] and the
    /// sanitized name, as `upload` does before storing.
    pub async fn upload_form(
        files: &Files,
        headers: &HeaderMap,
        body: &mut BodyDataStream,
    ) -> Result<Checked, SignalError> {
        let mut reservation = Reservation { files, bytes: 0 };
        let mut category = None;
        let (form, ty) = files
            .read_checked_form(headers, body, &mut reservation, &mut category)
            .await?;
        Ok(Checked {
            ty,
            name: sanitize_name(&form.name, &ty),
            size: form.bytes.len(),
            voice: form.voice,
            duration_ms: form.duration_ms,
            client_id: form.client_id,
            reserved: reservation.bytes,
        })
    }

    /// The download URL's query: `room`, `exp`, `sig` (`None` when a parameter repeats).
    pub fn url_query(query: &str) -> Option<[Option<&str>; 3]> {
        UrlParams::parse(query).map(|p| [p.room, p.exp, p.sig])
    }

    /// The download URL's path id and query read into what its signature covers.
    pub fn signed_url<'a>(
        id: &str,
        query: &'a str,
    ) -> Result<(FileId, RoomId, u64, &'a str), SignalError> {
        super::signed_url(id, query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_params() {
        let p = UrlParams::parse("room=ab&exp=12&sig=cd&x=1&&flag").expect("no repeats");
        assert_eq!((p.room, p.exp, p.sig), (Some("ab"), Some("12"), Some("cd")));
        assert!(UrlParams::parse("room=a&sig=b&sig=c").is_none());
        assert!(UrlParams::parse("exp=1&exp=1").is_none());
        let empty = UrlParams::parse("").expect("empty is fine");
        assert_eq!((empty.room, empty.exp, empty.sig), (None, None, None));
    }

    fn files(budget: u64, ttl: Duration, dir: Option<PathBuf>) -> Files {
        let registry = prometheus::Registry::new();
        Files::new(
            FileSettings {
                max_size: 1000,
                ttl,
                uploads_per_min: 5,
                bytes_per_hour: 10_000,
                storage_budget: budget,
                dir,
                max_voice_ms: 300_000,
                key: b"k".to_vec(),
            },
            FileMetrics::register(&registry),
        )
        .expect("no directory to read")
    }

    async fn put(f: &Files, room: RoomId, n: usize) -> FileId {
        let id = FileId::from_raw(rand::random());
        let mut r = Reservation { files: f, bytes: 0 };
        r.grow(n as u64).expect("within budget");
        let ty =
            classify(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", Some("image/png"), "a.png").expect("a PNG");
        f.store(NewFile {
            id,
            room,
            guests: [SessionId::from_raw(1), SessionId::from_raw(2)],
            name: "a.png".into(),
            ty,
            bytes: Bytes::from(vec![7u8; n]),
        })
        .await
        .map_err(|_| "store")
        .expect("stored");
        r.keep();
        id
    }

    #[test]
    fn reservations_stay_within_the_budget_and_give_back_on_drop() {
        let f = files(100, Duration::from_secs(60), None);
        {
            let mut a = Reservation {
                files: &f,
                bytes: 0,
            };
            a.grow(60).unwrap();
            let mut b = Reservation {
                files: &f,
                bytes: 0,
            };
            assert_eq!(b.grow(50), Err(SignalError::StorageFull));
            b.grow(40).unwrap();
            assert_eq!(f.used.load(Ordering::Relaxed), 100);
        }
        assert_eq!(f.used.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn chat_end_and_expiry_delete_everything() {
        let f = files(10_000, Duration::from_millis(200), None);
        let (r1, r2) = (RoomId::from_raw(1), RoomId::from_raw(2));
        put(&f, r1, 100).await;
        put(&f, r1, 200).await;
        let keep = put(&f, r2, 300).await;
        assert_eq!(f.metrics.stored_files.get(), 3);
        assert_eq!(f.metrics.stored_bytes.get(), 600);
        assert_eq!(f.used.load(Ordering::Relaxed), 600);
        f.delete_room(r1);
        f.delete_room(r1);
        assert_eq!(f.metrics.stored_files.get(), 1);
        assert_eq!(f.used.load(Ordering::Relaxed), 300);
        assert!(f.index().files.contains_key(&keep));
        // Not yet due.
        f.sweep(Instant::now());
        assert_eq!(f.metrics.stored_files.get(), 1);
        f.sweep(Instant::now() + Duration::from_secs(1));
        assert_eq!(f.metrics.stored_files.get(), 0);
        assert_eq!(f.metrics.stored_bytes.get(), 0);
        assert_eq!(f.used.load(Ordering::Relaxed), 0);
        assert_eq!(f.metrics.expirations.get(), 1);
        let idx = f.index();
        assert!(idx.by_room.is_empty() && idx.by_expiry.is_empty());
    }

    #[tokio::test]
    async fn disk_files_are_written_removed_and_leftovers_cleared() {
        let dir = std::env::temp_dir().join(format!("tandem-files-test-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{DISK_PREFIX}old")), b"x").unwrap();
        std::fs::write(dir.join("not-ours"), b"x").unwrap();
        let f = files(10_000, Duration::from_secs(60), Some(dir.clone()));
        assert!(!dir.join(format!("{DISK_PREFIX}old")).exists());
        assert!(dir.join("not-ours").exists());
        let room = RoomId::from_raw(5);
        let id = put(&f, room, 10).await;
        let path = dir.join(format!("{DISK_PREFIX}{id}"));
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 10]);
        f.delete_room(room);
        for _ in 0..100 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

pub use self::own_metrics::FileMetrics;

/// This component's metrics: it registers its own.
mod own_metrics {
    use crate::metrics::{counter, counter_vec, reg};
    use prometheus::{IntCounter, IntCounterVec, IntGauge, Registry};

    /// Shared files: uploads and downloads by outcome, what is stored, what went and why.
    #[derive(Clone)]
    pub struct FileMetrics {
        pub uploads: IntCounterVec,
        pub upload_bytes: IntCounter,
        pub downloads: IntCounterVec,
        pub stored_files: IntGauge,
        pub stored_bytes: IntGauge,
        pub expirations: IntCounter,
        pub deleted: IntCounterVec,
    }

    /// Every upload outcome label (pre-registered so dashboards see zeros).
    pub const UPLOAD_OUTCOMES: [&str; 11] = [
        "ok",
        "unauthorized",
        "rate_limited",
        "not_in_chat",
        "too_large",
        "invalid_upload",
        "unsupported_type",
        "voice_too_long",
        "storage_full",
        "partner_away_queue_full",
        "error",
    ];
    /// Every download outcome label.
    pub const DOWNLOAD_OUTCOMES: [&str; 7] = [
        "ok",
        "unauthorized",
        "invalid_signature",
        "expired",
        "not_found",
        "forbidden",
        "error",
    ];

    impl FileMetrics {
        pub fn register(r: &Registry) -> Self {
            let m = FileMetrics {
                uploads: counter_vec(
                    r,
                    "tandem_file_uploads_total",
                    "File uploads by category (unknown until the type is known) and outcome",
                    &["category", "outcome"],
                ),
                upload_bytes: counter(
                    r,
                    "tandem_file_upload_bytes_total",
                    "Bytes of accepted uploads",
                ),
                downloads: counter_vec(
                    r,
                    "tandem_file_downloads_total",
                    "File downloads (GET and HEAD) by outcome",
                    &["outcome"],
                ),
                stored_files: reg(
                    r,
                    IntGauge::new("tandem_files_stored", "Shared files stored now")
                        .expect("valid metric"),
                ),
                stored_bytes: reg(
                    r,
                    IntGauge::new("tandem_file_bytes_stored", "Bytes of shared files stored now")
                        .expect("valid metric"),
                ),
                expirations: counter(
                    r,
                    "tandem_file_expirations_total",
                    "Shared files deleted because their lifetime ran out",
                ),
                deleted: counter_vec(
                    r,
                    "tandem_files_deleted_total",
                    "Shared files deleted, by reason: expired, chat_ended, unsent (the chat ended during the upload)",
                    &["reason"],
                ),
            };
            for outcome in DOWNLOAD_OUTCOMES {
                m.downloads.with_label_values(&[outcome]);
            }
            for cat in tandem_signaling::files::Category::ALL {
                m.uploads.with_label_values(&[cat.as_str(), "ok"]);
            }
            for outcome in UPLOAD_OUTCOMES {
                m.uploads.with_label_values(&["unknown", outcome]);
            }
            for reason in ["expired", "chat_ended", "unsent"] {
                m.deleted.with_label_values(&[reason]);
            }
            m
        }
    }
}
