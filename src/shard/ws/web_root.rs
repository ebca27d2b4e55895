//! The static files of `--web-root`: the web chat page, read into memory once at start and
//! served to plain GETs on the WebSocket ports.

use bytes::Bytes;

/// The static files of `--web-root`, read once at start (see [`WebRoot::load`]).
#[derive(Debug, Default)]
pub struct WebRoot {
    /// (URL path, content type, body), e.g. ("/dist/web/src/app.js", "text/javascript", ..).
    files: Vec<(String, &'static str, Bytes)>,
}

/// The most bytes `--web-root` may hold: the page is a few hundred KiB.
pub const MAX_WEB_ROOT: u64 = 16 << 20;

/// Why `--web-root` cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum WebRootError {
    #[error("cannot read the web root {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the web root {path} holds more than {MAX_WEB_ROOT} bytes of files: point --web-root at the built page (web/, with dist/, index.html, style.css)")]
    TooBig { path: std::path::PathBuf },
    #[error("the web root {path} has no index.html: point --web-root at the web/ folder of the source (after `npm run build:web` in sdk/js)")]
    NoIndex { path: std::path::PathBuf },
}

impl WebRoot {
    /// Reads `index.html`, `style.css` and everything under `dist/` of `dir` into memory
    /// (files of other types and anything else in `dir` are not served). Symbolic links are
    /// not followed; a path that does not name one of these files is a 404, so `..` reaches
    /// nothing.
    pub fn load(dir: &std::path::Path) -> Result<WebRoot, WebRootError> {
        let mut root = WebRoot::default();
        let mut total = 0u64;
        let read_err = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| WebRootError::Read { path, source }
        };
        for name in ["index.html", "style.css"] {
            let path = dir.join(name);
            if path.is_file() {
                root.add(dir, &path, &mut total)?;
            }
        }
        if !root.files.iter().any(|(p, _, _)| p == "/index.html") {
            return Err(WebRootError::NoIndex {
                path: dir.to_owned(),
            });
        }
        let mut pending = vec![dir.join("dist")];
        while let Some(folder) = pending.pop() {
            if !folder.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&folder).map_err(read_err(&folder))? {
                let entry = entry.map_err(read_err(&folder))?;
                let kind = entry.file_type().map_err(read_err(&entry.path()))?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() && content_type(&entry.path()).is_some() {
                    root.add(dir, &entry.path(), &mut total)?;
                }
            }
        }
        Ok(root)
    }

    fn add(
        &mut self,
        dir: &std::path::Path,
        path: &std::path::Path,
        total: &mut u64,
    ) -> Result<(), WebRootError> {
        let body = std::fs::read(path).map_err(|source| WebRootError::Read {
            path: path.to_owned(),
            source,
        })?;
        *total += body.len() as u64;
        if *total > MAX_WEB_ROOT {
            return Err(WebRootError::TooBig {
                path: dir.to_owned(),
            });
        }
        let Ok(relative) = path.strip_prefix(dir) else {
            return Ok(());
        };
        let url = format!("/{}", relative.to_string_lossy().replace('\\', "/"));
        let Some(ty) = content_type(path) else {
            return Ok(());
        };
        self.files.push((url, ty, Bytes::from(body)));
        Ok(())
    }

    /// The file for a request path (`/` is `/index.html`; a query string is ignored).
    pub fn get(&self, path: &str) -> Option<(&'static str, &Bytes)> {
        let path = path.split(['?', '#']).next().unwrap_or("/");
        let path = if path == "/" { "/index.html" } else { path };
        self.files
            .iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, ty, body)| (*ty, body))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// The content type served for a file, by its extension; `None`: not served.
fn content_type(path: &std::path::Path) -> Option<&'static str> {
    Some(match path.extension()?.to_str()? {
        "html" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "map" | "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        _ => return None,
    })
}
