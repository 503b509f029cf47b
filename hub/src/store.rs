//! Opening the database together with its master key, for `serve`,
//! `keys` and `robots` alike; secret params an older hub left in clear are
//! sealed here, the first moment both are at hand.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::db::{Db, Location, keys, secret_params};
use crate::secrets::{KeyFileError, MasterKey, key_path};

/// Where the hub's state is: every command that opens it takes these.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// The database: a SQLite file (created if missing; `sqlite:PATH` too)
    /// or a PostgreSQL URL (`postgres://user@host/db`), which several hubs
    /// may share. Give its password with --db-password-file rather than in
    /// the URL, which other local users can read in the process list.
    #[arg(long, env = "TASUKI_HUB_DB", default_value = "tasuki-hub.db")]
    pub db: Location,
    /// The file with the master key that seals access-key secrets and
    /// secret params (mode 0600; made on first start). For SQLite it
    /// defaults to `<db>.key`; with PostgreSQL it must be given, and every
    /// hub of that database needs the same file.
    #[arg(long, env = "TASUKI_HUB_MASTER_KEY")]
    pub master_key: Option<PathBuf>,
    /// A file (mode 0600) that holds the PostgreSQL password.
    #[arg(long, env = "TASUKI_HUB_DB_PASSWORD_FILE")]
    pub db_password_file: Option<PathBuf>,
    /// PEM certificates of the CA that signed the PostgreSQL server's TLS
    /// certificate, instead of the system's roots. The certificate is
    /// verified whenever TLS is used (`sslmode=prefer`, the default, uses
    /// it when the server offers it; `sslmode=require` insists).
    #[arg(long, env = "TASUKI_HUB_DB_CA_FILE")]
    pub db_ca_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The master key file: `--master-key`, or `<db>.key` beside a SQLite
    /// file.
    pub fn key_file(&self) -> anyhow::Result<PathBuf> {
        match (&self.master_key, &self.db) {
            (Some(path), _) => Ok(path.clone()),
            (None, Location::Sqlite(path)) => Ok(key_path(path)),
            (None, Location::Postgres(_)) => bail!(
                "a PostgreSQL database needs --master-key PATH (or TASUKI_HUB_MASTER_KEY): the \
                 file with the key that seals its secrets, the same file for every hub of the \
                 database; the first hub makes it if the database is empty"
            ),
        }
    }

    fn location(&self) -> anyhow::Result<Location> {
        with_password_file(
            &self.db,
            self.db_password_file.as_deref(),
            "--db-password-file",
        )
    }
}

/// `location` with the password that `password_file` (given as `flag`)
/// holds, if one is given; only a PostgreSQL database takes one.
pub fn with_password_file(
    location: &Location,
    password_file: Option<&Path>,
    flag: &str,
) -> anyhow::Result<Location> {
    let Some(file) = password_file else {
        return Ok(location.clone());
    };
    let Location::Postgres(url) = location else {
        bail!("{flag} is for a PostgreSQL database; {location} is SQLite");
    };
    let password = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {flag} {}", file.display()))?;
    let password = password.trim_end_matches(['\r', '\n']);
    Ok(Location::Postgres(crate::db::with_password(url, password)))
}

pub async fn open(args: &StoreArgs) -> anyhow::Result<(Db, Arc<MasterKey>)> {
    let key_file = args.key_file()?;
    let db = Db::open(&args.location()?, args.db_ca_file.as_deref()).await?;
    let master = Arc::new(match MasterKey::load(&key_file) {
        Ok(key) => key,
        Err(KeyFileError::Missing(_)) => {
            // A new master key would make every stored secret unreadable:
            // only make one while there is nothing sealed yet.
            let (sealed_keys, sealed_params) = db
                .call(|conn| Ok((keys::count(conn)?, secret_params::sealed_count(conn)?)))
                .await?;
            if sealed_keys + sealed_params > 0 {
                bail!(
                    "the master key file {} is missing, but the database {} holds \
                     {sealed_keys} access key(s) and the secret params of {sealed_params} \
                     session(s) sealed with it; restore the file from a backup (or delete \
                     the database to start afresh)",
                    key_file.display(),
                    args.db
                );
            }
            MasterKey::create(&key_file)?
        }
        Err(e) => return Err(e).context("cannot use the master key"),
    });
    let sealing = master.clone();
    let sealed = db
        .call(move |conn| secret_params::seal_rows_left_in_clear(conn, &sealing))
        .await?;
    if sealed > 0 {
        tracing::info!(
            sessions = sealed,
            "sealed (or, for ended sessions, dropped) secret params an older hub stored in clear"
        );
    }
    Ok((db, master))
}
