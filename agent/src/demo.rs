//! `tasuki demo`: the quickstart with nothing to set up. The example
//! workflow and the demo shop it talks to are built into the binary; the
//! shop is served on a loopback port for the length of the run. Shell steps
//! run in a scratch directory; screenshots stay in the artifacts directory.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tasuki_actions::language::params::{ParamInputs, bind_params};
use tasuki_actions::{ExecOptions, LoadOptions, Registry, parse_workflow};

use crate::{EXIT_FAILED, OutputFormat};

const WORKFLOW_NAME: &str = "examples/quickstart.yaml (built in)";
const WORKFLOW: &str = include_str!("../../examples/quickstart.yaml");

/// The demo shop and its back office, as shipped in examples/site.
const SITE: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../examples/site/index.html"),
    ),
    (
        "backoffice.html",
        "text/html; charset=utf-8",
        include_bytes!("../../examples/site/backoffice.html"),
    ),
    (
        "backoffice-report.html",
        "text/html; charset=utf-8",
        include_bytes!("../../examples/site/backoffice-report.html"),
    ),
    (
        "api/orders.json",
        "application/json",
        include_bytes!("../../examples/site/api/orders.json"),
    ),
    (
        "api/orders.csv",
        "text/csv; charset=utf-8",
        include_bytes!("../../examples/site/api/orders.csv"),
    ),
];

pub fn run(output: OutputFormat, browser: &crate::BrowserArgs, artifacts: &std::path::Path) -> u8 {
    let registry = Registry::builtin();
    let workflow = match parse_workflow(WORKFLOW, WORKFLOW_NAME, &registry, &LoadOptions::default())
    {
        Ok(w) => w,
        Err(problems) => {
            eprintln!("the built-in example is invalid, which is a bug in this build:\n{problems}");
            return EXIT_FAILED;
        }
    };
    let Some(runtime) = crate::local_run::runtime() else {
        return EXIT_FAILED;
    };
    runtime.block_on(async move {
        let addr = match serve_site().await {
            Ok(addr) => addr,
            Err(e) => {
                eprintln!("cannot serve the demo shop on 127.0.0.1: {e}");
                return EXIT_FAILED;
            }
        };
        eprintln!("serving the demo shop at http://{addr}/index.html");
        let inputs = ParamInputs {
            flags: vec![("base_url".into(), format!("http://{addr}"))],
            ..ParamInputs::default()
        };
        let params = match bind_params(&workflow, &inputs) {
            Ok(p) => p,
            Err(problems) => {
                eprintln!("{problems}");
                return EXIT_FAILED;
            }
        };
        // Shell steps run in a scratch directory that goes away afterwards.
        let scratch = match tempfile::Builder::new().prefix("tasuki-demo-").tempdir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("cannot create a scratch directory: {e}");
                return EXIT_FAILED;
            }
        };
        let options = ExecOptions {
            artifacts_dir: artifacts.to_path_buf(),
            work_dir: scratch.path().to_path_buf(),
            state_dir: scratch.path().to_path_buf(),
            browser: browser.settings(),
            ..ExecOptions::default()
        };
        tokio::spawn(crate::local_run::execute(
            workflow,
            params,
            options,
            output,
            registry,
            std::sync::Arc::new(tasuki_actions::runtime::wait::NoWaiter),
        ))
        .await
        .unwrap_or(EXIT_FAILED)
    })
}

async fn serve_site() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/{*file}", get(site_file));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the demo shop stopped: {e}");
        }
    });
    Ok(addr)
}

async fn site_file(Path(file): Path<String>) -> impl IntoResponse {
    match SITE.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, *content_type)],
            *body,
        ),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            &b"not found"[..],
        ),
    }
}
