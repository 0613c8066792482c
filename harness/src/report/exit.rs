//! Exit codes a script can trust.

/// Every check passed (unsupported ones aside).
pub const PASS: i32 = 0;
/// At least one check failed: the kernel does not do what it should.
pub const FAIL: i32 = 1;
/// The user's input was wrong: nothing ran.
pub const USAGE: i32 = 2;
/// natvet could not test (download, boot, timeout, panic): no verdict.
pub const INFRA: i32 = 3;
