//! Mirroring for isolated networks: a declared set of images copied from other registries
//! into this one (`berth mirror sync`). The set file and its tag and platform selection are
//! in `set` and `select`; the copy in `sync`, which reads sources with the pull-through
//! cache's upstream client (token flow, rate limits) and writes through the repository layer.
//! Push replication (`replicate`) is the same copy, from this registry's store to another
//! registry, driven by a durable queue of push and delete events.

pub mod bundle;
pub mod dest;
pub mod progress;
pub mod replicate;
pub mod select;
pub mod set;
pub mod source;
pub mod sync;
