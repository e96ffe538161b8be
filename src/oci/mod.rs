//! The OCI vocabulary shared by the registry, the store and gc: validated names, tags and
//! digests, and manifest parsing. Nothing here does I/O, so every byte that later becomes part
//! of a storage path has passed one of these parsers first.

pub mod digest;
pub mod manifest;
pub mod name;
pub mod pattern;
pub mod resumable;

pub use digest::{Algorithm, Digest, Digester};
pub use manifest::{Descriptor, Manifest, ManifestError, ManifestKind};
pub use name::{Reference, RepoName, Tag};
