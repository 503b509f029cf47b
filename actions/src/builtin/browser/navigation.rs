//! Which URLs a workflow may send the browser to. WebDriver navigation is
//! browser-initiated, so Chromium's own guard (a web page cannot open a
//! local file) does not apply to it: `browser.goto file:///etc/shadow`
//! would read any file the robot can. Only web pages are allowed, and local
//! files only where the robot's operator says so.

use url::Url;

/// The robot setting (and `tasuki run` flag) that allows local files.
pub const FILE_URLS_SETTING: &str = "browser.allow_file_urls (`tasuki run --allow-file-urls`)";

/// The actions whose `url` sends the browser somewhere.
pub const NAVIGATING_ACTIONS: &[&str] = &["browser.open", "browser.goto"];

/// Schemes that show local files: allowed only with [`FILE_URLS_SETTING`].
const FILE_SCHEMES: &[&str] = &["file", "view-source"];

/// Whether the browser may be sent to `text`. `allow_file_urls` is `None`
/// when the robot is not known (the hub validating for any robot): then
/// only what every robot refuses is refused.
pub fn check_navigation(text: &str, allow_file_urls: Option<bool>) -> Result<(), String> {
    let url = Url::parse(text)
        .map_err(|e| format!("`{text}` is not an absolute URL ({e}); give http:// or https://"))?;
    let scheme = url.scheme();
    match scheme {
        "http" | "https" | "data" => Ok(()),
        "about" if url.path() == "blank" => Ok(()),
        s if FILE_SCHEMES.contains(&s) => match allow_file_urls {
            Some(false) => Err(format!(
                "`{s}:` URLs open local files, which this robot refuses; its operator can \
                 allow them with {FILE_URLS_SETTING}"
            )),
            Some(true) | None => Ok(()),
        },
        other => Err(format!(
            "the `{other}:` scheme is refused; the browser opens http, https, data and \
             about:blank URLs (and file URLs where {FILE_URLS_SETTING} allows them){}",
            if other == "javascript" {
                "; run scripts with browser.execute_script"
            } else {
                ""
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_pages_pass_and_local_or_internal_schemes_do_not() {
        for ok in [
            "https://example.test/a?b=c",
            "http://127.0.0.1:8080/",
            "data:text/html,<p>hi</p>",
            "about:blank",
        ] {
            assert_eq!(check_navigation(ok, Some(false)), Ok(()), "{ok}");
        }
        for refused in [
            "chrome://settings",
            "chrome-extension://abc/page.html",
            "devtools://devtools/bundled/inspector.html",
            "filesystem:http://example.test/temporary/x",
            "javascript:alert(1)",
            "about:settings",
            "ftp://example.test/",
        ] {
            for allow in [Some(false), Some(true), None] {
                assert!(check_navigation(refused, allow).is_err(), "{refused}");
            }
        }
        let e = check_navigation("FILE:///etc/passwd", Some(false)).unwrap_err();
        assert!(
            e.contains("`file:`") && e.contains("browser.allow_file_urls"),
            "{e}"
        );
        assert!(check_navigation("view-source:file:///etc/passwd", Some(false)).is_err());
        assert_eq!(check_navigation("file:///etc/passwd", Some(true)), Ok(()));
        assert_eq!(check_navigation("file:///etc/passwd", None), Ok(()));
        assert!(check_navigation("/etc/passwd", Some(true)).is_err());
    }
}
