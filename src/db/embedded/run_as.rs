//! The user the embedded server runs as: ourselves, or `postgres` when the
//! service runs as root (PostgreSQL refuses root). Switching is done by
//! setting the child's uid and gid, never with `runuser`, which swallows
//! SIGINT and hangs shutdown.

use std::{
    fs,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::Path,
    process::Command,
};

use nix::unistd::{Gid, Uid, User, chown};

use super::{EmbeddedPostgresError, Result, SUPERUSER, failed};

/// The user the server runs as: ourselves, or `postgres` when we are root.
pub(super) struct RunAs {
    pub(super) uid: Uid,
    gid: Gid,
    switch: bool,
}

pub(super) fn run_as() -> Result<RunAs> {
    if !Uid::effective().is_root() {
        return Ok(RunAs {
            uid: Uid::effective(),
            gid: Gid::effective(),
            switch: false,
        });
    }
    let user = User::from_name(SUPERUSER)
        .ok()
        .flatten()
        .ok_or(EmbeddedPostgresError::NoUnprivilegedUser)?;
    Ok(RunAs {
        uid: user.uid,
        gid: user.gid,
        switch: true,
    })
}

impl RunAs {
    pub(super) fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if self.switch {
            command.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
        command
    }

    /// Checks that the server user can search every directory above `path`
    /// (root can, so a root-run check would pass and initdb fail obscurely).
    pub(super) fn ensure_reachable(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        if !self.switch {
            return Ok(());
        }
        for ancestor in path.ancestors().skip(1) {
            let Ok(meta) = fs::metadata(ancestor) else {
                continue;
            };
            let mode = meta.permissions().mode();
            let searchable = mode & 0o001 != 0
                || (meta.uid() == self.uid.as_raw() && mode & 0o100 != 0)
                || (meta.gid() == self.gid.as_raw() && mode & 0o010 != 0);
            if !searchable {
                return Err(EmbeddedPostgresError::UnreachableDataDirectory {
                    path: path.to_path_buf(),
                    blocked: ancestor.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    pub(super) fn own(&self, path: &Path) -> Result<()> {
        if self.switch {
            chown(path, Some(self.uid), Some(self.gid)).map_err(|e| failed("chown", e))?;
        }
        Ok(())
    }
}
