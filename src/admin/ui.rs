//! The ops console at `/admin/ui`: one page, one script and one stylesheet,
//! embedded in the binary.
//!
//! The shell is served without the admin token, because a browser cannot
//! send a bearer token when it navigates. It holds no data and no secret:
//! the script asks the operator for the token and sends it on every call to
//! the token-protected API under `/admin/*`. Unknown `/admin/ui/…` paths are
//! not served here; they fall through to the API's fallback, which answers
//! 401 without the token and 404 with it, as for any other unknown path.

use std::sync::LazyLock;

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Where the console lives; the asset URLs in `index.html` are absolute, so
/// the page works at `/admin/ui` and `/admin/ui/` alike.
pub const PATH: &str = "/admin/ui";

const INDEX_HTML: &str = include_str!("ui/index.html");
/// Where the page's provider filter takes its options.
const PROVIDER_OPTIONS: &str = "<!-- provider options -->";

/// The page, with an option in the provider filter for each provider of the
/// registry table, in its order.
static INDEX: LazyLock<String> = LazyLock::new(|| {
    let options: Vec<String> = crate::domain::ProviderKind::NAMES
        .iter()
        .map(|name| format!("<option>{name}</option>"))
        .collect();
    INDEX_HTML.replacen(PROVIDER_OPTIONS, &options.join("\n            "), 1)
});
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Only our own script and stylesheet, no inline code, no framing, no
/// plugins, and fetches to this origin only: event fields come from payment
/// providers, and if one ever slipped into markup it could run nothing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's routes, with full paths, for merging beside the `/admin`
/// nest (explicit routes win over the nest's fallback).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route(PATH, get(index))
        .route("/admin/ui/", get(index))
        .route("/admin/ui/app.js", get(script))
        .route("/admin/ui/style.css", get(stylesheet))
}

async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX.as_str())
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 7] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // A new release must not be mixed with a cached old script.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The console's address is not sent on to other sites.
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_assets() {
        assert!(INDEX_HTML.contains("src=\"/admin/ui/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/admin/ui/style.css\""));
        // The CSP forbids inline code; keep the page free of it.
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("<style"));
        let attributes: Vec<&str> = INDEX_HTML
            .split('<')
            .filter_map(|tag| tag.split('>').next())
            .flat_map(|tag| tag.split_whitespace().skip(1))
            .collect();
        assert!(
            attributes.iter().any(|a| a.starts_with("id=")),
            "attributes are seen"
        );
        for attribute in attributes {
            let name = attribute.split('=').next().unwrap_or_default();
            assert!(
                !name.starts_with("on") && name != "style",
                "inline code or style: {attribute}"
            );
        }
    }

    #[test]
    fn the_provider_filter_lists_every_provider() {
        assert!(INDEX_HTML.contains(PROVIDER_OPTIONS));
        assert!(!INDEX.contains(PROVIDER_OPTIONS));
        for name in crate::domain::ProviderKind::NAMES {
            assert!(INDEX.contains(&format!("<option>{name}</option>")), "{name}");
        }
    }

    #[test]
    fn the_script_never_parses_markup() {
        // Event fields are hostile input: the DOM gets them as text only.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }
}
