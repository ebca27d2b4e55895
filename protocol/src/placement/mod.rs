//! Where ids live in a cluster: the partition an id, a handle or a pair of users is in
//! ([`partition`]), and the consistent-hash ring that maps partitions to nodes ([`ring`]).
//!
//! Pure functions, shared by everything that must agree on placement: the server's router
//! (`courier::cluster`), `courier admin provision`, and the load generator, which pairs users
//! whose direct thread lives on their own node. Ids and session tokens carry their partition
//! on the wire (PROTOCOL.md), so this is part of the protocol's contract.

pub mod partition;
pub mod ring;
