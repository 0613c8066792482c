//! The operator's own relay: a bundle (`bundle.rs`) captured from a
//! production server (`capture.rs`, addresses redacted by `redact.rs`), read (`ruleset.rs`) and turned into a
//! scenario (`scenario.rs`) whose relay has the production interface names,
//! sysctls and ruleset, loaded as it is, with checks derived from what that
//! ruleset promises.

pub mod bundle;
pub mod capture;
pub mod redact;
pub mod ruleset;
pub mod scenario;

pub use bundle::{Bundle, BundleError};
pub use scenario::{derive, Derived};
