//! A client of Debian-format apt repositories (Debian's archive and its
//! security archive, Ubuntu's, a company's): each suite's signed Release
//! (`InRelease`, or `Release` + `Release.gpg`) checked with gpgv against
//! the repository's keys ([`openpgp`](crate::kernel::openpgp)), its `Valid-Until`
//! and suite name checked ([`release`](crate::kernel::release)), each Packages
//! index checked against the size and SHA-256 the signed Release lists
//! before it is parsed or cached, every kernel stanza's fields validated
//! before they reach a URL, a path or a command, and each `.deb` checked
//! against the SHA-256 and size of its index entry. Which packages make a
//! kernel, and which kernel a spec names, is the sources' business
//! (`sources/apt.rs`).
//!
//! Nothing is cached before it is verified: an HTML error page, a
//! truncated or tampered index is refused, never stored. A suite whose
//! Release is badly signed or whose index does not match it makes the
//! repository's index an error (exit 3), never a silent fallback; an
//! expired one is kept aside (its stale but authentic content tells
//! whether it could change an answer, see `Index::expired`).
//!
//! The parts, each importing only those listed before it: the errors
//! (`error.rs`), HTTP and its interruption (`http.rs`), [`Stanza`]s and
//! their validation (`stanza.rs`), a suite's signed Release (`signed.rs`),
//! a suite's Packages indexes (`suite.rs`), the repository's [`Index`] of
//! all its suites (`index.rs`) and package downloads (`download.rs`). This
//! file only names what the rest of natvet uses; no part imports it. The
//! parts' tests share the fixtures of `tests.rs` with the sources' tests.

mod download;
mod error;
mod http;
mod index;
mod signed;
mod stanza;
mod suite;
#[cfg(test)]
pub(crate) mod tests;

pub use download::download;
pub use error::ArchiveError;
pub use http::cancel_downloads;
pub use index::{load_index, Index};
pub use signed::{missing_keyring, INDEX_MAX_AGE};
pub use stanza::{parse_packages, valid_filename, valid_package_name, valid_version, Stanza};
pub use suite::{looks_like_packages, Expired};
