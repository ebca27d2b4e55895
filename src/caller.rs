//! Who a request comes from and which connections answers go to: the small types the chat
//! engine, the directory and the shards all name, kept apart so that none of them depends on
//! another for them.

pub use courier_protocol::peer::UsersChecked;

/// A connection anywhere in the cluster: its node, its shard, its slab slot, and the slot's
/// generation, so that an answer never reaches a later connection that reused the slot.
///
/// `node` is the node's index in the member list (`Links::local`; 0 on a single node). An
/// answer to a `ConnRef` of another node goes back over the links (`FORWARD_REPLY`). Twelve
/// bytes: the directory stores one per online device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnRef {
    pub shard: u16,
    pub node: u16,
    pub slot: u32,
    pub gen: u32,
}

/// The authenticated sender of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user: u64,
    pub device: u32,
    pub conn: ConnRef,
    /// What the node the request came from checked about the users it names that are homed
    /// on other nodes (`UsersChecked::No` for a request of this node's own users that names
    /// only users the engine can look up here).
    pub checked: UsersChecked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conn_ref_stays_twelve_bytes() {
        assert_eq!(std::mem::size_of::<ConnRef>(), 12);
    }
}
