//! A tiny static HTTP/1.1 server for `examples/site`, on a loopback port, so
//! the browser benchmark needs nothing else running. One thread accepts;
//! each connection gets a thread and is kept alive for as long as the
//! browser wants. GET and HEAD only; `/` serves `index.html`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};

pub struct Site {
    addr: SocketAddr,
    /// Requests for `index.html` served so far, to check a run loaded it.
    pages: Arc<AtomicUsize>,
}

impl Site {
    /// Serves `root` on a free loopback port until the process ends.
    pub fn start(root: &Path) -> Result<Site> {
        let index = root.join("index.html");
        anyhow::ensure!(
            index.is_file(),
            "the demo site is missing: no file at {}",
            index.display()
        );
        let listener =
            TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port for the site")?;
        let addr = listener.local_addr()?;
        let pages = Arc::new(AtomicUsize::new(0));
        let (root, counter) = (root.to_path_buf(), pages.clone());
        std::thread::Builder::new()
            .name("site".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let (root, counter) = (root.clone(), counter.clone());
                    let _ = std::thread::Builder::new()
                        .name("site-conn".into())
                        .spawn(move || {
                            let _ = serve_connection(stream, &root, &counter);
                        });
                }
            })
            .context("cannot start the site thread")?;
        Ok(Site { addr, pages })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pages_served(&self) -> usize {
        self.pages.load(Ordering::SeqCst)
    }
}

fn serve_connection(stream: TcpStream, root: &Path, pages: &AtomicUsize) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("connection")
                && value.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        let path = target.split(['?', '#']).next().unwrap_or("/");
        let (status, content_type, body) = match (method, resolve(root, path)) {
            ("GET" | "HEAD", Some(file)) => match std::fs::read(&file) {
                Ok(bytes) => {
                    if file.file_name().is_some_and(|n| n == "index.html") {
                        pages.fetch_add(1, Ordering::SeqCst);
                    }
                    ("200 OK", content_type(&file), bytes)
                }
                Err(_) => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
            },
            ("GET" | "HEAD", None) => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
            _ => (
                "405 Method Not Allowed",
                "text/plain",
                b"method not allowed\n".to_vec(),
            ),
        };
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
        .into_bytes();
        if method != "HEAD" {
            response.extend_from_slice(&body);
        }
        out.write_all(&response)?;
        if close {
            return Ok(());
        }
    }
}

/// The file a URL path names under `root`, if it stays inside it.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() || relative.ends_with('/') {
        format!("{relative}index.html")
    } else {
        relative.to_string()
    };
    let p = Path::new(&relative);
    if p.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let file = root.join(p);
    file.is_file().then_some(file)
}

fn content_type(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript",
        "css" => "text/css",
        "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn serves_the_index_and_refuses_escapes() {
        let root = crate::workspace_root().join("examples/site");
        let site = Site::start(&root).unwrap();
        let mut s = TcpStream::connect(site.addr).unwrap();
        s.write_all(b"GET /index.html?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.write_all(b"GET /../Cargo.toml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("Tasuki demo shop"));
        assert!(text.contains("HTTP/1.1 404 Not Found"));
        assert_eq!(site.pages_served(), 1);
    }
}
