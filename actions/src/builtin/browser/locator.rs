//! Where an element is. Besides CSS and XPath, an element can be found by
//! its visible text, or by its ARIA role and accessible name, which survive
//! a page's redesign better than its markup does.
//!
//! Text goes through XPath (one WebDriver call, like CSS). Role and name go
//! through one script that computes them in the page, because WebDriver has
//! no command that finds by them: the roles are the explicit `role` or the
//! HTML element's implicit one, and the name follows the accessible-name
//! rules in their usual order (aria-labelledby, aria-label, label, alt,
//! value of a button input, text for roles named by their content, title,
//! placeholder), which covers what forms and back-office pages use.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use thirtyfour::error::WebDriverResult;
use thirtyfour::{By, WebDriver, WebElement};

/// The fields that name an element, in the order a step's error lists them.
pub const FIELDS: &[&str] = &[
    "selector",
    "xpath",
    "by_text",
    "by_text_contains",
    "by_role",
    "by_label",
];

/// Where an element is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locator {
    Css(String),
    XPath(String),
    /// Its own visible text, whitespace normalised, equals this.
    Text(String),
    /// Its own visible text contains this.
    TextContains(String),
    /// An ARIA role, and optionally the accessible name (exact).
    Role {
        role: String,
        label: Option<String>,
    },
    /// Any element with this accessible name.
    Label(String),
    /// No element given (for actions whose element is optional).
    Unset,
}

/// The locator fields of a step, as written. Every element-taking action's
/// arguments carry these (see `element_args!`); `target` of
/// `browser.drag_and_drop` is one on its own.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocatorArgs {
    /// A CSS selector for the element.
    pub selector: Option<String>,
    /// An XPath for the element, instead of `selector`.
    pub xpath: Option<String>,
    /// The element whose visible text (whitespace normalised) is exactly this.
    pub by_text: Option<String>,
    /// The element whose visible text contains this.
    pub by_text_contains: Option<String>,
    /// An ARIA role such as `button`, `link`, `textbox`, `checkbox`, `tab`;
    /// with `by_label`, the one with that accessible name.
    pub by_role: Option<String>,
    /// The accessible name (aria-label, its label, alt, text...), exactly.
    pub by_label: Option<String>,
}

impl LocatorArgs {
    pub fn locator(&self) -> Locator {
        let text = |s: &Option<String>| s.clone();
        if let Some(css) = text(&self.selector) {
            Locator::Css(css)
        } else if let Some(xpath) = text(&self.xpath) {
            Locator::XPath(xpath)
        } else if let Some(t) = text(&self.by_text) {
            Locator::Text(t)
        } else if let Some(t) = text(&self.by_text_contains) {
            Locator::TextContains(t)
        } else if let Some(role) = text(&self.by_role) {
            Locator::Role {
                role,
                label: self.by_label.clone(),
            }
        } else if let Some(label) = text(&self.by_label) {
            Locator::Label(label)
        } else {
            Locator::Unset
        }
    }
}

/// Checks that `args` name at most one element (exactly one when
/// `required`), `prefix` being the path of the fields (`target.` for a
/// nested locator). `by_label` goes alone or with `by_role`.
pub fn check(args: &Map<String, Value>, required: bool, prefix: &str) -> Vec<(String, String)> {
    let given: Vec<&str> = FIELDS
        .iter()
        .copied()
        .filter(|k| args.contains_key(*k))
        .filter(|k| !(*k == "by_label" && args.contains_key("by_role")))
        .collect();
    let alternatives = "`selector` (CSS), `xpath`, `by_text`, `by_text_contains`, `by_role` (with an optional `by_label`) or `by_label`";
    match given.len() {
        0 if required => vec![(
            prefix.trim_end_matches('.').to_string(),
            format!("missing the element: give one of {alternatives}"),
        )],
        0 | 1 => Vec::new(),
        _ => vec![(
            format!("{prefix}{}", given[1]),
            format!(
                "give only one way to find the element, not {}",
                given
                    .iter()
                    .map(|g| format!("`{g}`"))
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )],
    }
}

impl Locator {
    pub fn is_set(&self) -> bool {
        !matches!(self, Locator::Unset)
    }

    /// The element in words, for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Locator::Css(css) => format!("selector `{css}`"),
            Locator::XPath(x) => format!("xpath `{x}`"),
            Locator::Text(t) => format!("the text \"{t}\""),
            Locator::TextContains(t) => format!("text containing \"{t}\""),
            Locator::Role { role, label: None } => format!("role `{role}`"),
            Locator::Role {
                role,
                label: Some(l),
            } => format!("role `{role}` named \"{l}\""),
            Locator::Label(l) => format!("accessible name \"{l}\""),
            Locator::Unset => "no element".into(),
        }
    }

    /// Every element that matches now, in document order. Never waits.
    pub async fn find_all(&self, driver: &WebDriver) -> WebDriverResult<Vec<WebElement>> {
        match self {
            Locator::Css(css) => driver.find_all(By::Css(css.clone())).await,
            Locator::XPath(x) => driver.find_all(By::XPath(x.clone())).await,
            Locator::Text(t) => driver.find_all(By::XPath(text_xpath(t, false))).await,
            Locator::TextContains(t) => driver.find_all(By::XPath(text_xpath(t, true))).await,
            Locator::Role { role, label } => by_script(driver, Some(role), label.as_deref()).await,
            Locator::Label(l) => by_script(driver, None, Some(l)).await,
            Locator::Unset => Ok(Vec::new()),
        }
    }
}

/// The elements whose text equals (or contains) `text`: the deepest ones
/// whose whole text does (`<p>Hello <b>world</b></p>` for "Hello world"),
/// those with a text node of their own that does (a menu's "Reports" over
/// its hidden items), and button inputs whose value does. Script, style
/// and head text is not visible text.
fn text_xpath(text: &str, contains: bool) -> String {
    let lit = xpath_literal(text);
    let test = |of: &str| {
        if contains {
            format!("contains(normalize-space({of}), {lit})")
        } else {
            format!("normalize-space({of}) = {lit}")
        }
    };
    let visible =
        "not(ancestor-or-self::script or ancestor-or-self::style or ancestor-or-self::head)";
    format!(
        "//*[{visible}][{whole}][not(.//*[{visible}][{whole}])] \
         | //*[{visible}][text()[{whole}]] \
         | //input[@type='submit' or @type='button' or @type='reset'][{value}]",
        whole = test("."),
        value = test("@value"),
    )
}

/// `s` as an XPath string literal, whatever quotes it holds.
pub fn xpath_literal(s: &str) -> String {
    if !s.contains('"') {
        format!("\"{s}\"")
    } else if !s.contains('\'') {
        format!("'{s}'")
    } else {
        let parts: Vec<String> = s.split('"').map(|p| format!("\"{p}\"")).collect();
        format!("concat({})", parts.join(", '\"', "))
    }
}

async fn by_script(
    driver: &WebDriver,
    role: Option<&str>,
    label: Option<&str>,
) -> WebDriverResult<Vec<WebElement>> {
    let found = driver
        .execute(
            BY_ROLE_JS,
            vec![
                role.map_or(Value::Null, |r| Value::String(r.trim().to_lowercase())),
                label.map_or(Value::Null, |l| Value::String(l.to_string())),
            ],
        )
        .await?;
    found.elements()
}

const BY_ROLE_JS: &str = r#"
const [wantRole, wantName] = arguments;
const clean = (s) => (s || '').replace(/\s+/g, ' ').trim();
const typeOf = (el) => (el.getAttribute('type') || 'text').toLowerCase();
const implicitRole = (el) => {
  const tag = el.tagName.toLowerCase();
  const type = typeOf(el);
  switch (tag) {
    case 'a': case 'area': return el.hasAttribute('href') ? 'link' : null;
    case 'button': return 'button';
    case 'input':
      if (['button', 'submit', 'reset', 'image'].includes(type)) return 'button';
      if (type === 'checkbox') return 'checkbox';
      if (type === 'radio') return 'radio';
      if (type === 'range') return 'slider';
      if (type === 'number') return 'spinbutton';
      if (type === 'hidden' || type === 'file') return null;
      if (type === 'search') return el.hasAttribute('list') ? 'combobox' : 'searchbox';
      return el.hasAttribute('list') ? 'combobox' : 'textbox';
    case 'textarea': return 'textbox';
    case 'select': return (el.multiple || el.size > 1) ? 'listbox' : 'combobox';
    case 'option': return 'option';
    case 'h1': case 'h2': case 'h3': case 'h4': case 'h5': case 'h6': return 'heading';
    case 'img': return el.getAttribute('alt') === '' ? 'presentation' : 'img';
    case 'ul': case 'ol': case 'menu': return 'list';
    case 'li': return 'listitem';
    case 'table': return 'table';
    case 'tr': return 'row';
    case 'td': return 'cell';
    case 'th': return el.closest('thead') ? 'columnheader' : 'rowheader';
    case 'nav': return 'navigation';
    case 'main': return 'main';
    case 'form': return 'form';
    case 'dialog': return 'dialog';
    case 'progress': return 'progressbar';
    case 'article': return 'article';
    case 'aside': return 'complementary';
    case 'header': return 'banner';
    case 'footer': return 'contentinfo';
    case 'summary': return 'button';
    default: return null;
  }
};
const roleOf = (el) => clean(el.getAttribute('role')).split(' ')[0].toLowerCase() || implicitRole(el);
const fromContent = ['button', 'link', 'heading', 'cell', 'columnheader', 'rowheader', 'checkbox',
  'radio', 'tab', 'menuitem', 'menuitemcheckbox', 'menuitemradio', 'option', 'row', 'switch',
  'treeitem', 'tooltip', 'listitem'];
const nameOf = (el, role) => {
  const by = el.getAttribute('aria-labelledby');
  if (by) {
    const text = clean(by.split(/\s+/).map((id) => document.getElementById(id))
      .filter(Boolean).map((e) => e.textContent).join(' '));
    if (text) return text;
  }
  const aria = clean(el.getAttribute('aria-label'));
  if (aria) return aria;
  const tag = el.tagName.toLowerCase();
  if (el.labels && el.labels.length) {
    const text = clean(Array.from(el.labels).map((l) => l.textContent).join(' '));
    if (text) return text;
  }
  if (tag === 'input' && ['button', 'submit', 'reset'].includes(typeOf(el))) {
    return clean(el.value) || { submit: 'Submit', reset: 'Reset' }[typeOf(el)] || '';
  }
  if (tag === 'img' || tag === 'area' || (tag === 'input' && typeOf(el) === 'image')) {
    const alt = clean(el.getAttribute('alt'));
    if (alt) return alt;
  }
  if (fromContent.includes(role)) {
    const text = clean(el.innerText || el.textContent);
    if (text) return text;
  }
  return clean(el.getAttribute('title')) || clean(el.getAttribute('placeholder'));
};
const found = [];
for (const el of document.querySelectorAll('body *')) {
  const role = roleOf(el);
  if (wantRole !== null && role !== wantRole) continue;
  if (wantName !== null && nameOf(el, role) !== wantName) continue;
  found.push(el);
}
return found;
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn one_way_to_find_an_element() {
        assert!(check(&args(json!({"by_text": "Delete"})), true, "").is_empty());
        assert!(
            check(
                &args(json!({"by_role": "button", "by_label": "Delete"})),
                true,
                ""
            )
            .is_empty()
        );
        assert!(check(&args(json!({"by_label": "Email"})), true, "").is_empty());
        let two = check(&args(json!({"selector": "#a", "by_text": "A"})), true, "");
        assert_eq!(two[0].0, "by_text");
        assert!(two[0].1.contains("`selector` and `by_text`"), "{two:?}");
        let none = check(&args(json!({})), true, "target.");
        assert_eq!(none[0].0, "target");
        assert!(none[0].1.contains("by_role"), "{none:?}");
        assert!(check(&args(json!({})), false, "").is_empty());
    }

    #[test]
    fn fields_lower_to_the_locator_they_name() {
        let l = |v: Value| {
            serde_json::from_value::<LocatorArgs>(v)
                .map(|a| a.locator())
                .ok()
        };
        assert_eq!(
            l(json!({"by_role": "button", "by_label": "Delete"})),
            Some(Locator::Role {
                role: "button".into(),
                label: Some("Delete".into())
            })
        );
        assert_eq!(
            l(json!({"by_label": "Email"})),
            Some(Locator::Label("Email".into()))
        );
        assert_eq!(l(json!({})), Some(Locator::Unset));
        assert_eq!(l(json!({"bytext": "x"})), None);
    }

    #[test]
    fn text_xpath_quotes_any_text() {
        assert!(text_xpath(r#"say "hi" it's"#, false).contains("concat("));
        assert!(text_xpath("Delete", true).contains("contains(normalize-space(.), \"Delete\")"));
    }
}
