//! The browser client: the files of `web/dist/`, embedded at build time (cargo rebuilds when
//! they change). Served with `Cache-Control: no-cache` and a strong `ETag`, so a browser
//! revalidates every load and gets a 304 until the binary changes.

use std::hash::{DefaultHasher, Hasher};
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page's Content-Security-Policy: everything from this origin only, media and images also
/// from `blob:` (local previews, received files), no plugins, no framing, no `<base>`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; \
    base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// Calls need the camera and microphone of this origin; nothing else may ask for them.
const PERMISSIONS: &str = "camera=(self), microphone=(self)";

/// One embedded file.
struct Asset {
    body: &'static [u8],
    content_type: &'static str,
    /// The HTML document: also gets the CSP and the Permissions-Policy.
    document: bool,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(body: &'static [u8], content_type: &'static str, document: bool) -> Self {
        Self {
            body,
            content_type,
            document,
            etag: OnceLock::new(),
        }
    }

    /// A strong tag of the content, computed once per process.
    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let mut h = DefaultHasher::new();
            h.write(self.body);
            let tag = format!("\"{:016x}-{:x}\"", h.finish(), self.body.len());
            HeaderValue::from_str(&tag).unwrap_or(HeaderValue::from_static("\"0\""))
        })
    }
}

static INDEX: Asset = Asset::new(
    include_bytes!("../web/dist/index.html"),
    "text/html; charset=utf-8",
    true,
);
static APP_JS: Asset = Asset::new(
    include_bytes!("../web/dist/app.js"),
    "text/javascript; charset=utf-8",
    false,
);
static APP_CSS: Asset = Asset::new(
    include_bytes!("../web/dist/app.css"),
    "text/css; charset=utf-8",
    false,
);
static FAVICON: Asset = Asset::new(
    include_bytes!("../web/dist/favicon.svg"),
    "image/svg+xml",
    false,
);

/// `GET` (and, through axum, `HEAD`: same headers, no body) of every embedded file.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|h: HeaderMap| async move { serve(&INDEX, &h) }))
        .route(
            "/app.js",
            get(|h: HeaderMap| async move { serve(&APP_JS, &h) }),
        )
        .route(
            "/app.css",
            get(|h: HeaderMap| async move { serve(&APP_CSS, &h) }),
        )
        .route(
            "/favicon.svg",
            get(|h: HeaderMap| async move { serve(&FAVICON, &h) }),
        )
}

/// Any other path outside `/api/`: a plain 404.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "Not found\n",
    )
        .into_response()
}

fn serve(asset: &'static Asset, req: &HeaderMap) -> Response {
    let etag = asset.etag();
    let mut res = if matches_none_match(req, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut res = asset.body.into_response();
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        res
    };
    let h = res.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if asset.document {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static(PERMISSIONS),
        );
    }
    res
}

/// Does `If-None-Match` name this tag (weak comparison, RFC 9110 §13.1.2) or `*`?
fn matches_none_match(req: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(ours) = etag.to_str() else {
        return false;
    };
    req.get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_inm(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn etag_is_strong_quoted_and_stable() {
        let tag = INDEX.etag().to_str().unwrap().to_owned();
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() > 2);
        assert_eq!(INDEX.etag(), INDEX.etag());
        assert_ne!(INDEX.etag(), FAVICON.etag());
    }

    #[test]
    fn if_none_match_forms() {
        let tag = APP_JS.etag().to_str().unwrap().to_owned();
        assert!(matches_none_match(&with_inm(&tag), APP_JS.etag()));
        assert!(matches_none_match(
            &with_inm(&format!("W/{tag}")),
            APP_JS.etag()
        ));
        assert!(matches_none_match(
            &with_inm(&format!("\"x\", {tag}")),
            APP_JS.etag()
        ));
        assert!(matches_none_match(&with_inm("*"), APP_JS.etag()));
        assert!(!matches_none_match(&with_inm("\"other\""), APP_JS.etag()));
        assert!(!matches_none_match(&HeaderMap::new(), APP_JS.etag()));
    }

    #[test]
    fn not_modified_has_no_body_but_keeps_the_tag() {
        let tag = INDEX.etag().to_str().unwrap().to_owned();
        let res = serve(&INDEX, &with_inm(&tag));
        assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(res.headers()[header::ETAG], tag.as_str());
        assert!(res.headers().get(header::CONTENT_TYPE).is_none());
        let res = serve(&INDEX, &HeaderMap::new());
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        assert!(serve(&APP_CSS, &HeaderMap::new())
            .headers()
            .get(header::CONTENT_SECURITY_POLICY)
            .is_none());
    }
}
