//! The agent's results channel: one JSON line per message to the host (the
//! guest's second serial port, or a descriptor natvet handed its child).

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use crate::protocol::GuestMessage;

static RESULTS: OnceLock<Mutex<File>> = OnceLock::new();

/// Send one message to the host. Messages are lines; a write error has nowhere to go.
pub fn send(msg: &GuestMessage) {
    let mut line = msg.to_line();
    // A result whose captures would break the protocol's line limit goes
    // without them: the verdict matters more than the packets.
    if line.len() > crate::protocol::MAX_LINE {
        if let GuestMessage::Check(r) = msg {
            let mut r = r.clone();
            if let Some(ev) = r.evidence.as_mut() {
                ev.capture_note = format!(
                    "captures left out: with them this result was {} bytes, over the protocol's {} byte limit; {}",
                    line.len(),
                    crate::protocol::MAX_LINE,
                    ev.capture_note
                );
                ev.captures.clear();
            }
            line = GuestMessage::Check(r).to_line();
        }
    }
    if let Some(port) = RESULTS.get() {
        if let Ok(mut f) = port.lock() {
            let _ = writeln!(f, "{line}");
            let _ = f.flush();
        }
    }
}

/// Make `file` the channel every later `send` writes to (once).
pub fn install(file: File) {
    let _ = RESULTS.set(Mutex::new(file));
}
