//! HTTP for the archive's client: one agent (timeouts, user agent), GETs
//! into memory with a size limit, and the switch that interrupts every
//! download of the process (SIGINT/SIGTERM).

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Stop every download of this process at its next chunk (SIGINT/SIGTERM):
/// the partial file is removed, the download fails as interrupted.
pub fn cancel_downloads() {
    CANCELLED.store(true, Ordering::SeqCst);
}

pub(super) fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

pub(super) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(20))
        .timeout_read(Duration::from_secs(60))
        .user_agent(concat!("natvet/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// What a GET brought.
pub(super) enum Got {
    Body(Vec<u8>),
    NotFound,
    /// More than the limit: not the file asked for.
    TooLarge,
}

/// GET `url` into memory (at most `limit` bytes), stopping when interrupted.
pub(super) fn get(url: &str, limit: u64) -> Result<Got, String> {
    let resp = match agent().get(url).call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404 | 410, _)) => return Ok(Got::NotFound),
        Err(e) => return Err(e.to_string()),
    };
    let mut reader = resp.into_reader().take(limit + 1);
    let mut body = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        if cancelled() {
            return Err("interrupted".into());
        }
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    if body.len() as u64 > limit {
        return Ok(Got::TooLarge);
    }
    Ok(Got::Body(body))
}
