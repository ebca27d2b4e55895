//! Administration.

use courier_protocol::{AdminStats, Stat};

use crate::client::expect_reply;
use crate::{Client, Result};

impl Client {
    /// The server's counters; admin accounts only (`FORBIDDEN` otherwise).
    pub fn admin_stats(&self) -> Result<Vec<Stat>> {
        Ok(expect_reply!(self.call(AdminStats {}), "AdminStats", Stats)?.entries)
    }
}
