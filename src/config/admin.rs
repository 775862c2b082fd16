//! `[admin]`: the admin listener's console (docs/operations.md#the-console). The
//! listener's address is `[server] admin_listen`.

use std::time::Duration;

use super::reader::{Errors, Key, KeyDefault, Table, key};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// The page at `/` and the record behind it (`/stats`, `/requests`).
    pub console: bool,
    /// A request that takes longer is kept as slow.
    pub slow: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            console: CONSOLE.default_bool(),
            slow: SLOW.default_duration(),
        }
    }
}

pub const CONSOLE: Key = key(
    "console",
    "The console on the admin listener: the page at / and its JSON (/stats, /requests). \
     false turns them and the request record off.",
)
.default(KeyDefault::Bool(true));
pub const SLOW: Key = key(
    "slow",
    "A request that takes longer than this is kept as slow (the console's last 50).",
)
.default(KeyDefault::Duration(Duration::from_millis(500)));

pub(super) fn read_admin(t: &mut Table<'_, '_>, errs: &mut Errors) -> AdminConfig {
    AdminConfig {
        console: t.bool_or(errs, CONSOLE),
        slow: t.positive_duration_or(errs, SLOW),
    }
}
