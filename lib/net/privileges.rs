//! Dropping root (postroom-tree(5), LIMITS AND SECURITY).
//!
//! Servers may start as root to bind ports below 1024; `mail-inject` may be
//! run by root's cron. Neither should touch the tree as root: files it made
//! would belong to root and the mail user could not change them later. So
//! every program that writes the tree calls [`drop_privileges`] before it
//! opens anything in it. As root, it becomes `run_as` if the config names a
//! user, else the owner of the folder holding the config (the tree's owner);
//! supplementary groups are cleared and gid set before uid, so root cannot
//! come back. A tree owned by root itself (a sandbox, a test) is left to
//! root. Anyone other than root keeps who they are: the
//! tree's permissions decide.

use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("run_as = {0:?}: no such system user (create it, or name the owner of the tree)")]
    NoSuchUser(String),
    #[error("cannot switch to user {user:?}: {error}")]
    Switch { user: String, error: nix::Error },
}

/// Leaves root behind if running as root; see the module doc.
pub fn drop_privileges(config: &Config) -> Result<(), PrivilegeError> {
    if !Uid::effective().is_root() {
        return Ok(());
    }
    let user = match config.run_as.as_deref() {
        Some(name) => User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| PrivilegeError::NoSuchUser(name.to_string()))?,
        None => {
            let owner = std::fs::metadata(&config.dir)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap_or(0);
            // A root-owned tree needs no passwd lookup (a read of
            // nsswitch.conf and passwd at every start of every program).
            let user = (owner != 0)
                .then(|| User::from_uid(Uid::from_raw(owner)).ok().flatten())
                .flatten();
            match user {
                Some(user) => user,
                None => {
                    tracing::debug!(tree = %config.dir.display(), "the tree belongs to root; staying root (set run_as)");
                    return Ok(());
                }
            }
        }
    };
    let switch = |error| PrivilegeError::Switch {
        user: user.name.clone(),
        error,
    };
    setgroups(&[user.gid]).map_err(switch)?;
    setgid(user.gid).map_err(switch)?;
    setuid(user.uid).map_err(switch)?;
    // Costs nothing, and proves root is gone for good.
    if setuid(Uid::from_raw(0)).is_ok()
        || (user.gid != Gid::from_raw(0) && setgid(Gid::from_raw(0)).is_ok())
    {
        return Err(switch(nix::Error::EPERM));
    }
    tracing::debug!(user = %user.name, "dropped root");
    Ok(())
}
