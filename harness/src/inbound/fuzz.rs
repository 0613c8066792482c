use super::*;
use crate::protocol::Status;
use proptest::prelude::*;

fn asked() -> Vec<(String, String, String)> {
    ["a", "b", "c"]
        .iter()
        .map(|c| ("s".to_string(), "nftables".to_string(), c.to_string()))
        .collect()
}

/// Messages a guest might send, honest and not.
fn message() -> impl Strategy<Value = String> {
    let name = prop_oneof![Just("a"), Just("b"), Just("c"), Just("x"), Just("..")];
    let status = prop_oneof![
        Just("pass"),
        Just("fail"),
        Just("error"),
        Just("unsupported"),
        Just("flaky")
    ];
    prop_oneof![
        "[0-9.a-z/\\-]{0,20}".prop_map(|r| format!(
            r#"{{"type":"hello","version":1,"kernel_release":"{r}","uptime_ms":1}}"#
        )),
        (name.clone(), status, any::<u64>()).prop_map(|(c, st, ms)| format!(
            r#"{{"type":"check","scenario":"s","backend":"nftables","check":"{c}","status":"{st}","expected":"e","observed":"\u001b[2J","duration_ms":{ms}}}"#
        )),
        name.clone().prop_map(|c| format!(
            r#"{{"type":"check_started","scenario":"s","backend":"nftables","check":"{c}"}}"#
        )),
        (any::<u64>(), proptest::collection::vec(any::<u32>(), 0..4)).prop_map(|(step, v)| format!(
            r#"{{"type":"check","scenario":"s","backend":"nftables","check":"a","status":"pass","expected":"e","observed":"o","duration_ms":1,"series":{{"step_ms":{step},"sent":{v:?},"answered":[1]}}}}"#
        )),
        "[a-z.]{0,8}".prop_map(|b| format!(
            r#"{{"type":"run_done","scenario":"s","backend":"{b}","setup_ms":1,"elapsed_ms":2}}"#
        )),
        "\\PC{0,40}".prop_map(|m| GuestMessage::Note { message: m }.to_line()),
        any::<u64>().prop_map(|ms| format!(r#"{{"type":"done","elapsed_ms":{ms}}}"#)),
        Just(String::new()),
        "\\PC{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn any_stream_in_any_pieces_never_panics(
        msgs in proptest::collection::vec(message(), 0..12),
        cuts in proptest::collection::vec(1usize..64, 0..8),
    ) {
        let stream: Vec<u8> = msgs.join("\n").into_bytes();
        let mut lines = Lines::messages(256);
        let mut inbound = Inbound::new(asked());
        let mut at = 0;
        let mut pieces = cuts.into_iter();
        while at < stream.len() {
            let n = pieces.next().unwrap_or(stream.len()).min(stream.len() - at);
            lines.push(&stream[at..at + n]);
            at += n;
            while let Some(p) = lines.next_line() {
                if p.cut || inbound.accept(&p.bytes).is_err() {
                    return Ok(());
                }
            }
        }
        let got = inbound.finish();
        // What was accepted is what the job asked for, once each, and clean.
        let mut seen = std::collections::HashSet::new();
        for r in &got.results {
            prop_assert!(["a", "b", "c"].contains(&r.check.as_str()));
            prop_assert!(seen.insert(r.check.clone()));
            prop_assert!(r.status != Status::Flaky);
            prop_assert!(!r.observed.contains('\u{1b}'), "escape kept: {:?}", r.observed);
        }
        prop_assert!(got.notes.iter().all(|n| !n.chars().any(|c| c.is_control() && c != '\t')));
    }

    #[test]
    fn lines_do_not_depend_on_how_bytes_arrive(
        bytes in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'x'), any::<u8>()], 0..400),
        cut in 1usize..50,
    ) {
        let collect = |chunk: usize| {
            let mut lines = Lines::messages(16);
            let mut out = Vec::new();
            for c in bytes.chunks(chunk) {
                lines.push(c);
                while let Some(p) = lines.next_line() {
                    out.push(p);
                }
            }
            out
        };
        let whole = collect(bytes.len().max(1));
        prop_assert!(whole.iter().all(|p| p.bytes.len() <= 16));
        prop_assert_eq!(whole, collect(cut));
    }
}
