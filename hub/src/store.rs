//! Opening the database together with its master key, for `serve`,
//! `keys` and `robots` alike; secret params an older hub left in clear are
//! sealed here, the first moment both are at hand.

use std::path::Path;

use anyhow::{Context, bail};

use crate::db::{Db, keys, secret_params};
use crate::secrets::{KeyFileError, MasterKey, key_path};

pub fn open(db_path: &Path) -> anyhow::Result<(Db, MasterKey)> {
    let db = Db::open(db_path)?;
    let key_file = key_path(db_path);
    let master = match MasterKey::load(&key_file) {
        Ok(key) => key,
        Err(KeyFileError::Missing(_)) => {
            // A new master key would make every stored secret unreadable:
            // only make one while there is nothing sealed yet.
            let (sealed_keys, sealed_params) =
                db.with(|conn| Ok((keys::count(conn)?, secret_params::sealed_count(conn)?)))?;
            if sealed_keys + sealed_params > 0 {
                bail!(
                    "the master key file {} is missing, but the database {} holds \
                     {sealed_keys} access key(s) and the secret params of {sealed_params} \
                     session(s) sealed with it; restore the file from a backup (or delete \
                     the database to start afresh)",
                    key_file.display(),
                    db_path.display()
                );
            }
            MasterKey::create(&key_file)?
        }
        Err(e) => return Err(e).context("cannot use the master key"),
    };
    let sealed = db.with(|conn| secret_params::seal_rows_left_in_clear(conn, &master))?;
    if sealed > 0 {
        tracing::info!(
            sessions = sealed,
            "sealed (or, for ended sessions, dropped) secret params an older hub stored in clear"
        );
    }
    Ok((db, master))
}
