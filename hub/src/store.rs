//! Opening the database together with its master key, for `serve` and
//! `keys` alike.

use std::path::Path;

use anyhow::{Context, bail};

use crate::db::{Db, keys};
use crate::secrets::{KeyFileError, MasterKey, key_path};

pub fn open(db_path: &Path) -> anyhow::Result<(Db, MasterKey)> {
    let db = Db::open(db_path)?;
    let key_file = key_path(db_path);
    let master = match MasterKey::load(&key_file) {
        Ok(key) => key,
        Err(KeyFileError::Missing(_)) => {
            // A new master key would make every stored secret unreadable:
            // only make one while there is nothing sealed yet.
            let sealed = db.with(|conn| keys::count(conn))?;
            if sealed > 0 {
                bail!(
                    "the master key file {} is missing, but the database {} holds {sealed} \
                     access key(s) sealed with it; restore the file from a backup (or delete \
                     the database to start afresh)",
                    key_file.display(),
                    db_path.display()
                );
            }
            MasterKey::create(&key_file)?
        }
        Err(e) => return Err(e).context("cannot use the master key"),
    };
    Ok((db, master))
}
