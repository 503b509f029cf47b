//! Watching the first request head of a connection for a header value
//! broken over several lines.
//!
//! The AUTORO document builds its JWT with `base64`, whose GNU version
//! wraps its output every 76 characters; curl then sends the wrapped token
//! as it is, `Authorization: Bearer eyJ…\nbSIs…\nIjog…\r\n`, bare line
//! feeds inside one header line. hyper refuses such a head (the line after
//! a bare LF has no `:`), which [`crate::listener`] answers with the API's
//! JSON error; this watch lets that error name the header and the fix.
//!
//! In `--autoro-compat` mode ([`Mode::Join`]) it repairs the head instead:
//! a line that continues `Authorization` after a bare LF and consists
//! solely of base64 or base64url characters and `.`/`=` is joined to it,
//! the LF replaced by a space. Such a line holds no `:`, space or CR, so
//! joining it cannot make a header of its own, nor end the head early:
//! nothing can be smuggled past a proxy that reads the head differently.
//! Any other line is left as it came, for hyper to refuse. The space keeps
//! where the line broke: the recipe signed the wrapped text, and the token
//! check (`api/wrapped_token.rs`) needs it to verify that signature.
//!
//! Only a connection's first head is watched. The next head on a kept-alive
//! connection starts after the first request's body, and finding where that
//! body ends needs the framing hyper does (content-length, chunked): a
//! second request with a wrapped token on the same connection gets hyper's
//! plain `malformed_request`. curl sends each command line's request on a
//! connection of its own.

/// What to do with a wrapped value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Leave the head as it is (hyper refuses it); remember the header, so
    /// that the refusal can explain itself.
    Explain,
    /// Join a wrapped `Authorization` value whose continuation lines are
    /// base64(url) only, each line break made a space.
    Join,
}

/// The one header whose wrapped value [`Mode::Join`] repairs: the one the
/// AUTORO document's shell recipe fills.
const JOINED_HEADER: &str = "authorization";

/// A continuation line longer than this is not held back for joining (a
/// base64 line is 76 characters): it goes on as it came.
const MAX_HELD: usize = 16 * 1024;

/// Header names are kept up to this length, for the error.
const MAX_NAME: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the request line (blank lines before it are skipped, as
    /// hyper does).
    RequestLine { seen: bool },
    /// At the start of a header line, or of the blank line that ends the
    /// head; `cr` after a CR there.
    LineStart { cr: bool },
    /// Inside a header line.
    Header { colon: bool, cr: bool },
    /// In the line that follows a bare LF inside a header line.
    Continuation,
    /// The first head is over: nothing more is looked at.
    Done,
}

/// What the line after a bare LF held, so far.
#[derive(Debug, Default)]
struct Line {
    /// Bytes other than the line's final CR.
    len: usize,
    colon: bool,
    /// A CR not yet known to end the line.
    cr: bool,
    /// Every byte so far is base64(url), `.` or `=`.
    base64: bool,
    /// Its name, should it turn out to be a header of its own.
    name: Vec<u8>,
}

#[derive(Debug)]
pub struct HeadWatch {
    mode: Mode,
    state: State,
    /// The name of the header line being read.
    name: Vec<u8>,
    line: Line,
    /// In [`Mode::Join`], the bare LF and the line after it, held back
    /// until that line is whole and it is known whether to join it.
    held: Vec<u8>,
    /// The first header whose value was broken over lines and left so.
    unjoined: Option<String>,
}

impl HeadWatch {
    pub fn new(mode: Mode) -> HeadWatch {
        HeadWatch {
            mode,
            state: State::RequestLine { seen: false },
            name: Vec::new(),
            line: Line::default(),
            held: Vec::new(),
            unjoined: None,
        }
    }

    /// Whether the first head is over (bytes may then go straight through).
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The header whose value came broken over lines and was not joined.
    pub fn unjoined(&self) -> Option<&str> {
        self.unjoined.as_deref()
    }

    /// Reads `input`, appending what hyper is to see to `out`: the same
    /// bytes, but for the LFs joined away as spaces, less what is held back
    /// for now.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for (i, &b) in input.iter().enumerate() {
            if self.state == State::Done {
                out.extend_from_slice(&input[i..]);
                return;
            }
            self.byte(b, out);
        }
    }

    /// The connection's input ended: whatever is held goes on as it came.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
        self.state = State::Done;
    }

    fn byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::RequestLine { seen } => {
                out.push(b);
                self.state = match b {
                    b'\n' if seen => State::LineStart { cr: false },
                    b'\n' => State::RequestLine { seen: false },
                    b'\r' => State::RequestLine { seen },
                    _ => State::RequestLine { seen: true },
                };
            }
            State::LineStart { cr } => match b {
                b'\n' => {
                    out.push(b);
                    self.state = State::Done;
                }
                b'\r' if !cr => {
                    out.push(b);
                    self.state = State::LineStart { cr: true };
                }
                _ => {
                    self.name.clear();
                    self.state = State::Header {
                        colon: false,
                        cr: false,
                    };
                    self.byte(b, out);
                }
            },
            State::Header { colon, cr } => match b {
                b'\n' if cr => {
                    out.push(b);
                    self.state = State::LineStart { cr: false };
                }
                b'\n' => self.bare_lf(out),
                b'\r' => {
                    out.push(b);
                    self.state = State::Header { colon, cr: true };
                }
                _ => {
                    out.push(b);
                    if b == b':' {
                        self.state = State::Header {
                            colon: true,
                            cr: false,
                        };
                    } else {
                        if !colon && self.name.len() < MAX_NAME {
                            self.name.push(b);
                        }
                        self.state = State::Header { colon, cr: false };
                    }
                }
            },
            State::Continuation => self.continuation(b, out),
            State::Done => out.push(b),
        }
    }

    /// A LF without a CR before it, inside a header line: the value may go
    /// on in the next line.
    fn bare_lf(&mut self, out: &mut Vec<u8>) {
        self.line = Line {
            base64: true,
            ..Line::default()
        };
        self.state = State::Continuation;
        match self.mode {
            Mode::Join => self.held.push(b'\n'),
            Mode::Explain => out.push(b'\n'),
        }
    }

    fn continuation(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.mode {
            Mode::Join => self.held.push(b),
            Mode::Explain => out.push(b),
        }
        if self.mode == Mode::Join && self.held.len() > MAX_HELD {
            // Too long to be a wrapped token (checked before anything else,
            // so that no byte, a CR neither, is held past it): let it
            // through as it came, and stop watching (hyper judges the rest).
            out.append(&mut self.held);
            self.note_unjoined();
            self.state = State::Done;
            return;
        }
        let line = &mut self.line;
        if b == b'\n' {
            let crlf = line.cr;
            self.line_ended(crlf, out);
            return;
        }
        if line.cr {
            // A CR inside the line, not before its LF.
            line.base64 = false;
            line.len += 1;
        }
        line.cr = b == b'\r';
        if line.cr {
            return;
        }
        line.len += 1;
        if b == b':' {
            line.colon = true;
        } else if !line.colon && line.name.len() < MAX_NAME {
            line.name.push(b);
        }
        line.base64 &=
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/' | b'.' | b'=');
    }

    /// The line after a bare LF is whole (`crlf`: it ended with CR LF).
    fn line_ended(&mut self, crlf: bool, out: &mut Vec<u8>) {
        let line = std::mem::take(&mut self.line);
        if line.len == 0 {
            // A blank line: the head ends (with bare LFs, which hyper
            // takes).
            out.append(&mut self.held);
            self.state = State::Done;
            return;
        }
        if line.colon {
            // A header of its own: the client ends lines with bare LFs.
            out.append(&mut self.held);
            self.name = line.name;
            self.after_line(crlf, out);
            return;
        }
        // A line with no `:` after a bare LF: the value was wrapped.
        let join = self.mode == Mode::Join
            && line.base64
            && String::from_utf8_lossy(&self.name).eq_ignore_ascii_case(JOINED_HEADER);
        if !join {
            out.append(&mut self.held);
            self.note_unjoined();
            self.after_line(crlf, out);
            return;
        }
        // Joined: the held LF (its first byte, put there by `bare_lf`)
        // becomes a space, the line stays; its own end is judged as any
        // end of the header's line.
        let mut held = std::mem::take(&mut self.held);
        if let Some(lf) = held.first_mut() {
            *lf = b' ';
        }
        out.extend_from_slice(&held);
        self.after_line(crlf, out);
    }

    /// The line just passed to `out` ended with CR LF (`crlf`) or a bare
    /// LF, its last byte in `out`: after CR LF a new line starts; a bare
    /// LF is taken back and judged as one inside the header's line, since
    /// what follows may continue it.
    fn after_line(&mut self, crlf: bool, out: &mut Vec<u8>) {
        if crlf {
            self.state = State::LineStart { cr: false };
        } else {
            out.pop();
            self.bare_lf(out);
        }
    }

    fn note_unjoined(&mut self) {
        if self.unjoined.is_none() {
            let name: String = String::from_utf8_lossy(&self.name)
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .collect();
            self.unjoined = Some(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: Mode, input: &[u8], chunk: usize) -> (Vec<u8>, HeadWatch) {
        let mut watch = HeadWatch::new(mode);
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            watch.feed(piece, &mut out);
        }
        (out, watch)
    }

    /// A continuation of CRs alone is held no longer than any other line.
    #[test]
    fn a_line_of_carriage_returns_is_not_held_past_the_limit() {
        let mut input = b"GET / HTTP/1.1\r\nAuthorization: Bearer a\nb".to_vec();
        input.extend(std::iter::repeat_n(b'\r', 20 * 1024));
        let mut watch = HeadWatch::new(Mode::Join);
        let mut out = Vec::new();
        for piece in input.chunks(512) {
            watch.feed(piece, &mut out);
            assert!(
                watch.held.len() <= MAX_HELD + 1,
                "{} held",
                watch.held.len()
            );
        }
        assert_eq!(out, input, "let through as it came");
    }

    const WRAPPED: &[u8] = b"POST /v1/session_queues HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer eyJh.eyJp\nbSIs\nIjog.c2ln\r\ncontent-type: application/json\r\n\r\n{\"a\":1}\nnot: head";

    #[test]
    fn explains_a_wrapped_value_and_changes_nothing() {
        for chunk in [1, 2, 7, usize::MAX] {
            let (out, watch) = run(Mode::Explain, WRAPPED, chunk.min(WRAPPED.len()));
            assert_eq!(out, WRAPPED, "chunk {chunk}");
            assert_eq!(watch.unjoined(), Some("Authorization"), "chunk {chunk}");
            assert!(watch.done());
        }
    }

    #[test]
    fn joins_a_wrapped_authorization_value_in_compat_mode() {
        let joined: &[u8] = b"POST /v1/session_queues HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer eyJh.eyJp bSIs Ijog.c2ln\r\ncontent-type: application/json\r\n\r\n{\"a\":1}\nnot: head";
        for chunk in [1, 3, 5, usize::MAX] {
            let (out, watch) = run(Mode::Join, WRAPPED, chunk.min(WRAPPED.len()));
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(joined),
                "chunk {chunk}"
            );
            assert_eq!(watch.unjoined(), None);
        }
    }

    #[test]
    fn never_joins_what_could_be_a_header_or_another_header_s_value() {
        for input in [
            // Not base64: a space, a colon (a header of its own).
            &b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\nde f\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX-Token: abc\ndef\r\n\r\n",
            // A CR inside the line.
            b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\nd\ref\r\n\r\n",
        ] {
            let (out, watch) = run(Mode::Join, input, 1);
            assert_eq!(out, input, "{}", String::from_utf8_lossy(input));
            assert!(
                watch.unjoined().is_some(),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let (_, watch) = run(
            Mode::Join,
            b"GET / HTTP/1.1\r\nX-Token: abc\ndef\r\n\r\n",
            4,
        );
        assert_eq!(watch.unjoined(), Some("X-Token"));
    }

    #[test]
    fn bare_lf_line_endings_are_not_a_wrapped_value() {
        let input: &[u8] = b"GET / HTTP/1.1\nHost: h\nAuthorization: Bearer x\n\nbody";
        for mode in [Mode::Explain, Mode::Join] {
            let (out, watch) = run(mode, input, 1);
            assert_eq!(out, input);
            assert_eq!(watch.unjoined(), None);
            assert!(watch.done());
        }
    }

    #[test]
    fn a_held_line_is_given_back_at_the_end_of_input() {
        let input: &[u8] = b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\ndef";
        let mut watch = HeadWatch::new(Mode::Join);
        let mut out = Vec::new();
        watch.feed(input, &mut out);
        assert!(out.len() < input.len());
        watch.end(&mut out);
        assert_eq!(out, input);
    }

    #[test]
    fn only_the_first_head_is_watched() {
        let input: &[u8] =
            b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nAuthorization: Bearer a\nb\r\n\r\n";
        let (out, watch) = run(Mode::Join, input, 1);
        assert_eq!(out, input);
        assert_eq!(watch.unjoined(), None);
    }

    #[test]
    fn a_wrapped_token_is_joined_whatever_ends_the_lines() {
        let input: &[u8] = b"GET / HTTP/1.1\nAuthorization: Bearer a.b\nc\nd.e\nHost: h\n\nbody";
        let (out, watch) = run(Mode::Join, input, 1);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET / HTTP/1.1\nAuthorization: Bearer a.b c d.e\nHost: h\n\nbody"
        );
        assert_eq!(watch.unjoined(), None);
        let (out, watch) = run(Mode::Explain, input, 3);
        assert_eq!(out, input);
        assert_eq!(watch.unjoined(), Some("Authorization"));
    }
}
