//! Page output: `browser.get_html` and `browser.print_pdf`.

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thirtyfour::common::print::{PrintOrientation, PrintParameters};

use super::{
    check_locator, check_relative, driver_error, run, sha256_hex, with_element, write_artifact,
};
use crate::runtime::context::ActionContext;
use crate::runtime::registry::{ActionError, TypedAction};

element_args!(
    /// The page's HTML as the browser has it now (after its scripts ran),
    /// or, given an element, that element's outer HTML.
    GetHtmlArgs {}
);
pub struct GetHtml;

impl TypedAction for GetHtml {
    type Args = GetHtmlArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, false)
    }

    async fn run(&self, ctx: &ActionContext, args: GetHtmlArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        run(ctx, None, move |h| {
            let locator = locator.clone();
            async move {
                let html = if locator.is_set() {
                    with_element(&h, &locator, wait, "get_html", |el| async move {
                        el.outer_html().await
                    })
                    .await?
                } else {
                    h.driver
                        .source()
                        .await
                        .map_err(|e| driver_error("get_html", e))?
                };
                Ok(json!({ "html": html }))
            }
        })
        .await
    }
}

pub struct PrintPdf;

/// Prints the page to PDF (WebDriver's print command; Chromium prints in
/// headless mode only), saved as an artifact.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrintPdfArgs {
    /// Where to save it, relative to the artifacts directory; `<step id>.pdf` by default.
    path: Option<String>,
    /// Landscape pages rather than portrait.
    #[serde(default)]
    landscape: bool,
    /// Print background colours and images too.
    #[serde(default)]
    background: bool,
}

impl TypedAction for PrintPdf {
    type Args = PrintPdfArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        match args.get("path") {
            Some(Value::String(path)) if !path.contains("${") => match check_relative(path) {
                Err(m) => vec![("path".into(), m)],
                Ok(()) => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    async fn run(&self, ctx: &ActionContext, args: PrintPdfArgs) -> Result<Value, ActionError> {
        let name = args
            .path
            .clone()
            .unwrap_or_else(|| format!("{}.pdf", ctx.step_id));
        let params = PrintParameters {
            orientation: if args.landscape {
                PrintOrientation::Landscape
            } else {
                PrintOrientation::Portrait
            },
            background: args.background,
            ..PrintParameters::default()
        };
        run(ctx, None, move |h| {
            let (params, name) = (params.clone(), name.clone());
            async move {
                let pdf = h.driver.print_page(params).await.map_err(|e| {
                    let mut err = driver_error("print_pdf", e);
                    if ctx.options().browser.remote_url.is_none() && !ctx.options().browser.headless
                    {
                        err.message
                            .push_str(" (Chromium prints to PDF only when it runs headless)");
                    }
                    err
                })?;
                let path = write_artifact(ctx, &name, &pdf)?;
                Ok(json!({
                    "path": path.display().to_string(),
                    "size": pdf.len(),
                    "sha256": sha256_hex(&pdf),
                }))
            }
        })
        .await
    }
}
