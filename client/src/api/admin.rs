//! Administration.

use courier_protocol::{AdminStats, Stat};

requests! {
    /// The server's counters; admin accounts only (`FORBIDDEN` otherwise).
    pub fn admin_stats() -> Vec<Stat> {
        AdminStats {} => Stats(reply) => reply.entries
    }
}
