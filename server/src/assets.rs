//! The pages' scripts and styles, compiled into the binary so that a `keel` copied anywhere
//! serves styled pages; `Config::static_dir` serves a folder instead, for working on them
//! without rebuilding. A test keeps the embedded copies equal to `static/` byte for byte.
//!
//! Each answer carries an `ETag` (a hash of the bytes) and `Cache-Control: no-cache`, so a
//! browser revalidates every load and gets `304 Not Modified` until the binary changes.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::AppError;

/// One embedded file of `static/`.
pub struct Asset {
    pub name: &'static str,
    pub bytes: &'static [u8],
}

macro_rules! assets {
    ($($name:literal),* $(,)?) => {
        [$(Asset { name: $name, bytes: include_bytes!(concat!("../../static/", $name)) }),*]
    };
}

/// Every file of `static/`.
pub static ASSETS: [Asset; 14] = assets![
    "colormap.js",
    "commands.js",
    "compare.js",
    "heatmap.js",
    "incidents.js",
    "keel.css",
    "keel.js",
    "launches.js",
    "linechart.js",
    "live-worker.js",
    "live.js",
    "profile.js",
    "run.js",
    "runs.js",
];

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The quoted ETag of each asset, in [`ASSETS`] order (FNV-1a of its bytes), made once.
fn etags() -> &'static [HeaderValue] {
    static TAGS: OnceLock<Vec<HeaderValue>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let hash = a.bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                HeaderValue::from_str(&format!("\"{hash:016x}\"")).expect("hex is a header value")
            })
            .collect()
    })
}

/// `GET /static/{name}` from the embedded files.
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Result<Response, AppError> {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return Err(AppError::NotFound(format!("no static file `{name}`")));
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let cache = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    let fresh = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    if fresh {
        return Ok((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    let kind = [(header::CONTENT_TYPE, content_type(asset.name))];
    Ok((cache, kind, asset.bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_assets_are_the_files_of_static_byte_for_byte() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../static");
        let mut on_disk: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().unwrap().to_str().unwrap().to_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect();
        on_disk.sort();
        let embedded: Vec<(String, Vec<u8>)> = ASSETS
            .iter()
            .map(|a| (a.name.to_owned(), a.bytes.to_vec()))
            .collect();
        // A file added to static/ must be added to ASSETS (sorted), and no copy may drift.
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&embedded), names(&on_disk));
        for ((name, a), (_, b)) in embedded.iter().zip(&on_disk) {
            assert!(a == b, "static/{name} differs from its embedded copy");
        }
        let tags: std::collections::HashSet<_> = etags().iter().collect();
        assert_eq!(tags.len(), ASSETS.len(), "every asset has its own ETag");
        for a in &ASSETS {
            assert_ne!(
                content_type(a.name),
                "application/octet-stream",
                "{}",
                a.name
            );
        }
    }
}
