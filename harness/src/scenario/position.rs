//! Where in a scenario's text a validation error is: the line of a value
//! by its path (`check`, 3, `flows`), read from the TOML's spans; or, for a
//! message about names and addresses, the line that writes what it quotes.

use std::ops::Range;

use toml_edit::{ArrayOfTables, ImDocument, InlineTable, Item, Table, Value};

/// One step down a parsed document.
enum Node<'a> {
    Table(&'a Table),
    Tables(&'a ArrayOfTables),
    Inline(&'a InlineTable),
    Array(&'a toml_edit::Array),
    Leaf,
}

fn of_item(item: &Item) -> Node<'_> {
    match item {
        Item::Table(t) => Node::Table(t),
        Item::ArrayOfTables(a) => Node::Tables(a),
        Item::Value(v) => of_value(v),
        Item::None => Node::Leaf,
    }
}

fn of_value(value: &Value) -> Node<'_> {
    match value {
        Value::InlineTable(t) => Node::Inline(t),
        Value::Array(a) => Node::Array(a),
        _ => Node::Leaf,
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_at(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The span of the value at `path` (keys, and list positions as numbers),
/// or of the deepest table or value on the way that the text writes (a key
/// left at its default has no line of its own: its table's header does).
fn span_of(doc: &ImDocument<&str>, path: &[String]) -> Option<Range<usize>> {
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for seg in path {
        let index = seg.parse::<usize>().ok();
        let (next, span) = match (&node, index) {
            (Node::Table(t), _) => match t.get_key_value(seg) {
                Some((k, item)) => (of_item(item), k.span().or_else(|| item.span())),
                None => break,
            },
            (Node::Inline(t), _) => match t.get_key_value(seg) {
                Some((k, v)) => (of_item(v), k.span().or_else(|| v.span())),
                None => break,
            },
            (Node::Tables(a), Some(i)) => match a.get(i) {
                Some(t) => (Node::Table(t), t.span()),
                None => break,
            },
            (Node::Array(a), Some(i)) => match a.get(i) {
                Some(v) => (of_value(v), v.span()),
                None => break,
            },
            _ => break,
        };
        if span.is_some() {
            best = span;
        }
        node = next;
    }
    best
}

/// The line of the value at `path`, as `span_of` finds it.
pub(super) fn line_of(text: &str, path: &[String]) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    span_of(&doc, path).map(|s| line_at(text, s.start))
}

/// The lines (1-based, first and last) of the table at `path` (`check`,
/// 3): from its header to the line before the next table's.
pub(super) fn table_lines(text: &str, path: &[String]) -> Option<(usize, usize)> {
    let first = line_of(text, path)?;
    let last = text
        .lines()
        .enumerate()
        .skip(first)
        .find(|(_, l)| l.trim_start().starts_with('['))
        .map_or(text.lines().count(), |(i, _)| i);
    Some((first, last))
}

/// The line a message about the table at `path` is about: of its own lines,
/// the one `locate` picks, else its header.
pub(super) fn locate_within(text: &str, path: &[String], message: &str) -> Option<usize> {
    let (first, last) = table_lines(text, path)?;
    let lines: Vec<&str> = text.lines().collect();
    let part = lines.get(first - 1..last)?.join("\n");
    Some(locate(&part, message).map_or(first, |l| first - 1 + l))
}

/// The line a validation message is most likely about: of the names,
/// addresses and references the message quotes, the one written on the
/// fewest lines of the text (the first such on a tie), and the last line
/// that holds it. None when the message names nothing written there (a
/// default, for example).
pub(super) fn locate(text: &str, message: &str) -> Option<usize> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.split_once('#').map_or(l, |(code, _)| code))
        .collect();
    let holds = |line: &str, token: &str| {
        line.match_indices(token).any(|(i, _)| {
            let before = line[..i].chars().next_back();
            let after = line[i + token.len()..].chars().next();
            let part = |c: Option<char>| {
                c.is_some_and(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c))
            };
            !part(before) && !part(after)
        })
    };
    message
        .split(|c: char| c.is_whitespace() || "'\"`,;()[]".contains(c))
        .map(|t| t.trim_end_matches(['.', ':']))
        .filter(|t| t.len() >= 3)
        .filter_map(|token| {
            // A plain word counts only where the text quotes it ("home").
            let special = token
                .chars()
                .any(|c| c.is_ascii_digit() || ":./-_".contains(c));
            let quoted = format!("\"{token}\"");
            let hits: Vec<usize> = (0..lines.len())
                .filter(|i| {
                    if special {
                        holds(lines[*i], token)
                    } else {
                        lines[*i].contains(&quoted)
                    }
                })
                .collect();
            Some((hits.len(), *hits.last()? + 1))
        })
        .min_by_key(|(n, _)| *n)
        .map(|(_, line)| line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    const TEXT: &str = "name = \"t\"\n[relay]\nlisten_port = 0\n\n[[check]]\nkind = \"many-flows\"\n\n[[check]]\nkind = \"many-flows\"\nflows = 7\nports = [\n  1,\n  2,\n]\nfaults = [{ at = 1 }, { at = 2 }]\n[[topology.link]]\nmtu = 1\n";

    #[test]
    fn values_are_found_by_their_path() {
        assert_eq!(line_of(TEXT, &path(&["relay", "listen_port"])), Some(3));
        assert_eq!(line_of(TEXT, &path(&["check", "1", "flows"])), Some(10));
        // A key left at its default: its table's header.
        assert_eq!(line_of(TEXT, &path(&["check", "0", "flows"])), Some(5));
        assert_eq!(
            line_of(TEXT, &path(&["check", "1", "ports", "1"])),
            Some(13)
        );
        assert_eq!(
            line_of(TEXT, &path(&["check", "1", "faults", "1", "at"])),
            Some(15)
        );
        assert_eq!(
            line_of(TEXT, &path(&["topology", "link", "0", "mtu"])),
            Some(17)
        );
        assert_eq!(line_of(TEXT, &path(&["nowhere"])), None);
        assert_eq!(line_of("not = [toml", &path(&["not"])), None);
    }

    #[test]
    fn a_message_about_a_check_stays_in_its_table() {
        // "many-flows" is written twice; the second check's error is on its own lines.
        assert_eq!(
            locate_within(TEXT, &path(&["check", "1"]), "check many-flows: bad"),
            Some(9)
        );
        assert_eq!(table_lines(TEXT, &path(&["check", "0"])), Some((5, 7)));
    }
}
