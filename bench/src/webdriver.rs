//! The floor of the browser benchmark: the same 10 steps as raw W3C
//! WebDriver HTTP calls, with nothing between the bench and chromedriver.
//!
//! A blocking HTTP/1.1 client on one kept-alive loopback connection; no
//! async runtime, no WebDriver library. Chromedriver is started as `tasuki`
//! starts it (own process group, free loopback port, `XDG_CONFIG_HOME` in
//! the profile, stdio to /dev/null) and Chromium gets the same binary,
//! flags and prefs. Element lookups and waits poll every 50 ms, like
//! `tasuki`'s. At the end: delete the session, kill the driver's process
//! group, kill whatever still names the profile, remove the profile.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver gets to start listening (as in `tasuki`).
const DRIVER_READY: Duration = Duration::from_secs(15);
/// How long an element lookup or wait may take (as in `tasuki`).
const ELEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium flags `tasuki` launches with (actions/src/builtin/browser/launch.rs),
/// before `--user-data-dir`.
pub const CHROMIUM_ARGS: [&str; 11] = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--password-store=basic",
    "--headless=new",
    "--window-size=1280,800",
];

/// The JavaScript of `browser.extract_table` (actions/src/builtin/browser/actions.rs).
pub const EXTRACT_TABLE_JS: &str = r#"
const table = arguments[0];
const text = (cell) => (cell.innerText || cell.textContent || '').trim();
const rows = Array.from(table.rows);
if (rows.length === 0) { return { headers: [], rows: [] }; }
const headerRow = (table.tHead && table.tHead.rows.length) ? table.tHead.rows[0] : rows[0];
const headers = Array.from(headerRow.cells).map((c, i) => text(c) || ('column_' + (i + 1)));
const body = rows.filter((r) => r !== headerRow && !(table.tHead && table.tHead.contains(r)));
return {
  headers: headers,
  rows: body.map((r) => {
    const row = {};
    Array.from(r.cells).forEach((c, i) => { row[headers[i] || ('column_' + (i + 1))] = text(c); });
    return row;
  }),
};
"#;

/// What the benchmark's steps type, and what the page must then say.
pub const CUSTOMER: &str = "Bench";
pub const ITEM_LABEL: &str = "Sash";
pub const ITEM_VALUE: &str = "sash";
pub const STATUS_WAIT: &str = "Thank you";
pub const EXPECTED_STATUS: &str = "Thank you, Bench! Order A-1004 is placed.";
/// Three orders in the page, and the one the form adds.
pub const EXPECTED_ROWS: usize = 4;
/// The step ids, in order; the same in every way the benchmark runs them.
pub const STEP_IDS: [&str; 10] = [
    "open", "customer", "item", "submit", "wait", "status", "orders", "shot", "url", "close",
];

/// The raw client's phase timings and the outputs to check, printed by
/// `tasuki-bench raw-browser` as one JSON object.
#[derive(Debug, Default)]
pub struct RawReport {
    /// Spawning chromedriver until its port accepts a connection.
    pub driver_ready_ms: f64,
    /// `POST /session`: Chromium starting.
    pub new_session_ms: f64,
    /// From the new session (`POST /session` returned) to the end of `DELETE /session`.
    pub session_to_quit_ms: f64,
    /// `DELETE /session` alone.
    pub quit_ms: f64,
    /// Killing the driver group, stragglers and the profile after the quit.
    pub teardown_ms: f64,
    /// Everything inside the process, from before the spawn to the end.
    pub total_ms: f64,
    /// Each step's time, in [`STEP_IDS`] order.
    pub steps_ms: Vec<(String, f64)>,
    pub status_text: String,
    pub rows: usize,
    pub url: String,
    pub screenshot: PathBuf,
    pub screenshot_bytes: usize,
}

impl RawReport {
    pub fn browser_start_ms(&self) -> f64 {
        self.driver_ready_ms + self.new_session_ms
    }

    pub fn to_json(&self) -> Value {
        json!({
            "driver_ready_ms": self.driver_ready_ms,
            "new_session_ms": self.new_session_ms,
            "browser_start_ms": self.browser_start_ms(),
            "session_to_quit_ms": self.session_to_quit_ms,
            "quit_ms": self.quit_ms,
            "teardown_ms": self.teardown_ms,
            "total_ms": self.total_ms,
            "steps_ms": self.steps_ms.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "status_text": self.status_text,
            "rows": self.rows,
            "url": self.url,
            "screenshot": self.screenshot,
            "screenshot_bytes": self.screenshot_bytes,
        })
    }

    pub fn from_json(v: &Value) -> Result<RawReport> {
        let f = |k: &str| {
            v[k].as_f64()
                .with_context(|| format!("raw-browser report: no number `{k}`"))
        };
        let steps = v["steps_ms"]
            .as_object()
            .context("raw-browser report: no `steps_ms`")?;
        Ok(RawReport {
            driver_ready_ms: f("driver_ready_ms")?,
            new_session_ms: f("new_session_ms")?,
            session_to_quit_ms: f("session_to_quit_ms")?,
            quit_ms: f("quit_ms")?,
            teardown_ms: f("teardown_ms")?,
            total_ms: f("total_ms")?,
            steps_ms: STEP_IDS
                .iter()
                .map(|id| {
                    (
                        id.to_string(),
                        steps.get(*id).and_then(Value::as_f64).unwrap_or(f64::NAN),
                    )
                })
                .collect(),
            status_text: v["status_text"].as_str().unwrap_or("").to_string(),
            rows: v["rows"].as_u64().unwrap_or(0) as usize,
            url: v["url"].as_str().unwrap_or("").to_string(),
            screenshot: PathBuf::from(v["screenshot"].as_str().unwrap_or("")),
            screenshot_bytes: v["screenshot_bytes"].as_u64().unwrap_or(0) as usize,
        })
    }
}

/// Runs the 10 steps against `url`, using `dir` for the profile and the
/// screenshot, and returns the timings. Fails when a result is wrong.
pub fn run_raw(
    url: &str,
    dir: &Path,
    chromium: &Path,
    chromedriver: &Path,
    poll: Duration,
) -> Result<RawReport> {
    let total = Instant::now();
    let mut report = RawReport::default();
    let profile = dir.join("raw-profile");
    std::fs::create_dir_all(&profile)
        .with_context(|| format!("cannot create {}", profile.display()))?;
    let downloads = dir.join("raw-downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("cannot create {}", downloads.display()))?;

    // 1. open: start chromedriver and Chromium, then load the page.
    let step = Instant::now();
    let port = free_port()?;
    let mut driver = Driver::spawn(chromedriver, port, &profile)?;
    wait_until_listening(port)?;
    report.driver_ready_ms = ms(step.elapsed());
    let mut wd = Http::connect(port)?;
    let session_started = Instant::now();
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let caps = json!({
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": args,
                    "prefs": {
                        "download.default_directory": downloads.display().to_string(),
                        "download.prompt_for_download": false,
                        "safebrowsing.enabled": false,
                    },
                },
            },
        },
    });
    let created = wd.call("POST", "/session", Some(&caps))?;
    let session = created["sessionId"]
        .as_str()
        .context("POST /session returned no sessionId")?
        .to_string();
    report.new_session_ms = ms(session_started.elapsed());
    let session_ready = Instant::now();
    let s = format!("/session/{session}");
    let mut client = Client { wd, s, poll };
    let result = client.steps(url, dir, &mut report, step);
    // 10. close: quit, then kill, even when a step failed.
    let step = Instant::now();
    let quit = client.wd.call("DELETE", &client.s, None);
    report.quit_ms = ms(step.elapsed());
    report.session_to_quit_ms = ms(session_ready.elapsed());
    let teardown = Instant::now();
    driver.kill();
    kill_processes_mentioning(&profile);
    let _ = std::fs::remove_dir_all(&profile);
    report.teardown_ms = ms(teardown.elapsed());
    report
        .steps_ms
        .push(("close".to_string(), ms(step.elapsed())));
    report.total_ms = ms(total.elapsed());
    result?;
    quit.context("DELETE /session")?;
    Ok(report)
}

struct Client {
    wd: Http,
    /// `/session/<id>`
    s: String,
    poll: Duration,
}

impl Client {
    /// Steps 1 (after the browser start) to 9.
    fn steps(
        &mut self,
        url: &str,
        dir: &Path,
        report: &mut RawReport,
        open_started: Instant,
    ) -> Result<()> {
        let s = self.s.clone();
        let lap = |report: &mut RawReport, id: &str, started: Instant| {
            report
                .steps_ms
                .push((id.to_string(), ms(started.elapsed())));
        };

        // 1. open (continued): load the page, read the URL back.
        self.wd
            .call("POST", &format!("{s}/url"), Some(&json!({ "url": url })))?;
        self.wd.call("GET", &format!("{s}/url"), None)?;
        lap(report, "open", open_started);

        // 2. type: clear the field, then type.
        let t = Instant::now();
        let el = self.find("#customer")?;
        self.wd
            .call("POST", &format!("{s}/element/{el}/clear"), Some(&json!({})))?;
        self.wd.call(
            "POST",
            &format!("{s}/element/{el}/value"),
            Some(&json!({ "text": CUSTOMER })),
        )?;
        lap(report, "customer", t);

        // 3. select by label, and read the chosen value back.
        let t = Instant::now();
        let select = self.find("#item")?;
        let option = self.wd.call(
            "POST",
            &format!("{s}/element/{select}/element"),
            Some(&json!({
                "using": "xpath",
                "value": format!(".//option[normalize-space(.)='{ITEM_LABEL}']"),
            })),
        )?;
        let option = element_id(&option)?;
        self.wd.call(
            "POST",
            &format!("{s}/element/{option}/click"),
            Some(&json!({})),
        )?;
        let value = self
            .wd
            .call("GET", &format!("{s}/element/{option}/property/value"), None)?;
        ensure!(
            value == ITEM_VALUE,
            "selected {value}, expected {ITEM_VALUE}"
        );
        lap(report, "item", t);

        // 4. click.
        let t = Instant::now();
        let el = self.find("#submit")?;
        self.wd
            .call("POST", &format!("{s}/element/{el}/click"), Some(&json!({})))?;
        lap(report, "submit", t);

        // 5. wait until #status contains the text, polling.
        let t = Instant::now();
        let deadline = t + ELEMENT_TIMEOUT;
        loop {
            let found = self.wd.call(
                "POST",
                &format!("{s}/elements"),
                Some(&json!({ "using": "css selector", "value": "#status" })),
            )?;
            if let Some(first) = found.as_array().and_then(|a| a.first()) {
                let el = element_id(first)?;
                let text = self
                    .wd
                    .call("GET", &format!("{s}/element/{el}/text"), None)?;
                if text.as_str().is_some_and(|t| t.contains(STATUS_WAIT)) {
                    break;
                }
            }
            ensure!(
                Instant::now() < deadline,
                "#status never contained \"{STATUS_WAIT}\""
            );
            std::thread::sleep(self.poll);
        }
        lap(report, "wait", t);

        // 6. read.
        let t = Instant::now();
        let el = self.find("#status")?;
        let text = self
            .wd
            .call("GET", &format!("{s}/element/{el}/text"), None)?;
        report.status_text = text.as_str().unwrap_or("").to_string();
        ensure!(
            report.status_text == EXPECTED_STATUS,
            "#status says {:?}, expected {EXPECTED_STATUS:?}",
            report.status_text
        );
        lap(report, "status", t);

        // 7. extract the table.
        let t = Instant::now();
        let el = self.find("#orders")?;
        let table = self.wd.call(
            "POST",
            &format!("{s}/execute/sync"),
            Some(&json!({ "script": EXTRACT_TABLE_JS, "args": [{ ELEMENT: el }] })),
        )?;
        let rows = table["rows"].as_array().context("no table rows")?;
        report.rows = rows.len();
        ensure!(
            report.rows == EXPECTED_ROWS,
            "the table has {} rows, expected {EXPECTED_ROWS}",
            report.rows
        );
        ensure!(
            rows[EXPECTED_ROWS - 1]["Customer"] == CUSTOMER,
            "the new order is not the bench's: {}",
            rows[EXPECTED_ROWS - 1]
        );
        lap(report, "orders", t);

        // 8. screenshot, saved as a PNG file.
        let t = Instant::now();
        let shot = self.wd.call("GET", &format!("{s}/screenshot"), None)?;
        let png = base64_decode(shot.as_str().context("the screenshot is not a string")?)?;
        ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        report.screenshot = dir.join("raw-shot.png");
        std::fs::write(&report.screenshot, &png)
            .with_context(|| format!("cannot write {}", report.screenshot.display()))?;
        report.screenshot_bytes = png.len();
        lap(report, "shot", t);

        // 9. URL and title.
        let t = Instant::now();
        let got = self.wd.call("GET", &format!("{s}/url"), None)?;
        self.wd.call("GET", &format!("{s}/title"), None)?;
        report.url = got.as_str().unwrap_or("").to_string();
        ensure!(
            report.url == url,
            "the URL is {}, expected {url}",
            report.url
        );
        lap(report, "url", t);
        Ok(())
    }

    /// The first element matching a CSS selector, polling while there is none.
    fn find(&mut self, css: &str) -> Result<String> {
        let deadline = Instant::now() + ELEMENT_TIMEOUT;
        let body = json!({ "using": "css selector", "value": css });
        loop {
            match self
                .wd
                .call("POST", &format!("{}/element", self.s), Some(&body))
            {
                Ok(v) => return element_id(&v),
                Err(e) if e.to_string().contains("no such element") => {
                    ensure!(Instant::now() < deadline, "no element matched {css}");
                    std::thread::sleep(self.poll);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn element_id(v: &Value) -> Result<String> {
    v[ELEMENT]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("not an element reference: {v}"))
}

/// A kept-alive HTTP/1.1 connection to chromedriver, JSON in and out.
struct Http {
    port: u16,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Http {
    fn connect(port: u16) -> Result<Http> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .with_context(|| format!("cannot connect to chromedriver on port {port}"))?;
        stream.set_nodelay(true)?;
        Ok(Http {
            port,
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// One WebDriver command; returns the response's `value`, or the
    /// WebDriver error as an error.
    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept: application/json\r\n",
            self.port
        );
        if method != "GET" && method != "DELETE" || !body.is_empty() {
            request.push_str(&format!(
                "Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(&body);
        self.writer
            .write_all(request.as_bytes())
            .with_context(|| format!("{method} {path}: cannot send"))?;
        let (status, close, bytes) = self
            .read_response()
            .with_context(|| format!("{method} {path}: cannot read the response"))?;
        if close {
            *self = Http::connect(self.port)?;
        }
        let v: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: the response is not JSON"))?;
        let value = v.get("value").cloned().unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            bail!(
                "{method} {path}: HTTP {status}: {}: {}",
                value["error"].as_str().unwrap_or("?"),
                value["message"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            );
        }
        Ok(value)
    }

    /// Status, whether the server closes the connection, and the body.
    fn read_response(&mut self) -> Result<(u16, bool, Vec<u8>)> {
        let mut line = String::new();
        ensure!(
            self.reader.read_line(&mut line)? > 0,
            "the connection closed"
        );
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            ensure!(
                self.reader.read_line(&mut line)? > 0,
                "the connection closed"
            );
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                let start = body.len();
                body.resize(start + size, 0);
                self.reader.read_exact(&mut body[start..])?;
                line.clear();
                self.reader.read_line(&mut line)?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        } else {
            self.reader.read_to_end(&mut body)?;
            close = true;
        }
        Ok((status, close, body))
    }
}

/// The local chromedriver, leader of its own process group.
struct Driver {
    child: Child,
}

impl Driver {
    fn spawn(chromedriver: &Path, port: u16, profile: &Path) -> Result<Driver> {
        use std::os::unix::process::CommandExt;
        let child = Command::new(chromedriver)
            .env("XDG_CONFIG_HOME", profile.join("config"))
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", chromedriver.display()))?;
        Ok(Driver { child })
    }

    /// SIGKILL to the whole group, then reap the driver.
    fn kill(&mut self) {
        signal_group(self.child.id() as i32, SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

const SIGKILL: i32 = 9;

unsafe extern "C" {
    /// libc's `kill(2)`; std links libc already.
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Sends `signal` to every process of group `pgid`.
pub fn signal_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) takes two integers and touches no memory of ours.
        unsafe {
            kill(-pgid, signal);
        }
    }
}

/// Sends `signal` to one process.
pub fn signal_process(pid: i32, signal: i32) {
    if pid > 1 {
        // SAFETY: as in `signal_group`.
        unsafe {
            kill(pid, signal);
        }
    }
}

/// SIGKILLs every live process whose command line names `path` (Chromium's
/// crash handler leaves the driver's group, but names the profile).
pub fn kill_processes_mentioning(path: &Path) -> usize {
    let needle = path.as_os_str().as_encoded_bytes();
    let mut killed = 0;
    for (pid, _) in
        processes_where(|_, cmdline, _| cmdline.windows(needle.len()).any(|w| w == needle))
    {
        signal_process(pid, SIGKILL);
        killed += 1;
    }
    killed
}

/// Live (not zombie) processes for which `pred(pid, cmdline, environ)`
/// holds, with a short description of each.
pub fn processes_where(pred: impl Fn(i32, &[u8], &[u8]) -> bool) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The state follows the command name, which is in parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("Z") {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if pred(pid, &cmdline, &environ) {
            let name: String = String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .chars()
                .take(80)
                .collect();
            found.push((pid, name));
        }
    }
    found
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("cannot find a free loopback port")?
        .local_addr()?
        .port())
}

fn wait_until_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + DRIVER_READY;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "chromedriver did not listen on port {port} within {} s",
            DRIVER_READY.as_secs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Standard base64, as WebDriver sends screenshots.
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("not base64: byte {c:#x}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8hIQ==").unwrap(), b"hello!!");
        assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert!(base64_decode("a$b").is_err());
    }
}
