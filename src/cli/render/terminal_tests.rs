//! Tests of the terminal renderer (`terminal.rs`).

use super::*;

/// A prefixed terminal writing to memory, with one step `s` known.
fn terminal() -> Terminal<Vec<u8>, Vec<u8>> {
    let mut t = Terminal::new(
        Vec::new(),
        Vec::new(),
        OutputMode::Prefixed,
        false,
        false,
        false,
    );
    t.order.push("s".into());
    t.steps.insert(
        "s".into(),
        StepView {
            color: anstyle::Style::new(),
            started: None,
            io: None,
        },
    );
    t
}

fn tail_of(t: &Terminal<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    t.steps["s"]
        .io
        .as_ref()
        .unwrap()
        .tail
        .iter()
        .copied()
        .collect()
}

#[test]
fn lines_split_across_chunks_print_whole_and_in_order() {
    let mut t = terminal();
    for chunk in [&b"one\ntw"[..], b"o\r\nthr", b"ee", b"\nfour\nfi", b"ve"] {
        t.output("s", chunk);
    }
    t.flush_step("s");
    let out = String::from_utf8(t.out.clone()).unwrap();
    let prefix = String::from_utf8(t.steps["s"].io.as_ref().unwrap().prefix.clone()).unwrap();
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.strip_prefix(&prefix).unwrap())
        .collect();
    assert_eq!(lines, ["one", "two", "three", "four", "five"]);
}

#[test]
fn the_tail_keeps_the_last_bytes_of_complete_lines_and_the_rest() {
    let mut t = terminal();
    let long = "x".repeat(TAIL_BYTES);
    t.output("s", format!("first\n{long}\nlast-open").as_bytes());
    let tail = tail_of(&t);
    assert_eq!(tail.len(), TAIL_BYTES);
    assert!(
        tail.ends_with(b"xxx\n"),
        "the open line is not in the tail yet"
    );
    // An open line completed by the next chunk joins the tail whole.
    t.output("s", b"-line\n");
    let tail = tail_of(&t);
    assert!(tail.ends_with(b"x\nlast-open-line\n"));
    // At the end, a last line without a newline is remembered too.
    t.output("s", b"unterminated");
    t.flush_step("s");
    let tail = tail_of(&t);
    assert!(tail.ends_with(b"last-open-line\nunterminated\n"));
}
