//! Built-in text generators, so a demo trains on a real mix without downloading anything.
//!
//! Three sources of visibly different difficulty, each a document at a time from a seeded
//! generator: `prose` (sentences from a small grammar: easy, mostly predictable), `code`
//! (small Python-like functions with nested blocks: medium, structure plus names) and
//! `arithmetic` (sums, differences and products with their answers: hard, the operands are
//! random digits and the answers need carrying). Their loss curves separate clearly, which makes
//! a data-mix change visible on the per-source losses.

use std::fmt::Write;

use crate::config::SourceKind;
use crate::rng::Rng;

/// One document of a built-in source. Panics on a file-backed kind (a caller's bug).
pub fn document(kind: SourceKind, rng: &mut Rng) -> String {
    match kind {
        SourceKind::Prose => prose(rng),
        SourceKind::Code => code(rng),
        SourceKind::Arithmetic => arithmetic(rng),
        SourceKind::Text | SourceKind::Jsonl => unreachable!("{kind:?} is not a generator"),
    }
}

const ADJECTIVES: [&str; 8] = [
    "small", "old", "quiet", "bright", "green", "tired", "warm", "little",
];
const NOUNS: [&str; 10] = [
    "cat", "dog", "river", "house", "child", "bird", "garden", "teacher", "boat", "tree",
];
const VERBS: [&str; 8] = [
    "sees", "likes", "finds", "follows", "watches", "helps", "visits", "hears",
];
const PLACES: [&str; 5] = [
    "in the morning",
    "near the hill",
    "by the sea",
    "after the rain",
    "at night",
];

fn noun_phrase(rng: &mut Rng) -> String {
    if rng.below(2) == 0 {
        format!("the {} {}", rng.pick(&ADJECTIVES), rng.pick(&NOUNS))
    } else {
        format!("the {}", rng.pick(&NOUNS))
    }
}

fn prose(rng: &mut Rng) -> String {
    let mut out = String::new();
    for _ in 0..3 + rng.below(4) {
        let mut s = format!(
            "{} {} {}",
            noun_phrase(rng),
            rng.pick(&VERBS),
            noun_phrase(rng)
        );
        if rng.below(3) == 0 {
            write!(s, " {}", rng.pick(&PLACES)).unwrap();
        }
        let mut chars = s.chars();
        let first = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or(' ');
        write!(out, "{first}{}. ", chars.as_str()).unwrap();
    }
    out.push('\n');
    out
}

const NAMES: [&str; 8] = [
    "total", "count", "items", "value", "index", "result", "size", "step",
];

fn code(rng: &mut Rng) -> String {
    let f = rng.pick(&["compute", "update", "merge", "scan", "reduce"]);
    let (a, b) = (rng.pick(&NAMES), rng.pick(&NAMES));
    let mut out = format!("def {f}_{}({a}, {b}):\n", rng.below(10));
    for _ in 0..1 + rng.below(3) {
        code_block(rng, &mut out, 1);
    }
    writeln!(out, "    return {a}\n").unwrap();
    out
}

/// One statement at `depth`, recursing into nested blocks up to depth 3.
fn code_block(rng: &mut Rng, out: &mut String, depth: usize) {
    let pad = "    ".repeat(depth);
    let (x, y) = (rng.pick(&NAMES), rng.pick(&NAMES));
    match rng.below(if depth < 3 { 4 } else { 2 }) {
        0 => writeln!(out, "{pad}{x} = {x} + {y}").unwrap(),
        1 => writeln!(out, "{pad}{x} = {y} * {}", rng.below(10)).unwrap(),
        2 => {
            writeln!(out, "{pad}for i in range({}):", 1 + rng.below(9)).unwrap();
            code_block(rng, out, depth + 1);
        }
        _ => {
            writeln!(out, "{pad}if {x} > {y}:").unwrap();
            code_block(rng, out, depth + 1);
        }
    }
}

fn arithmetic(rng: &mut Rng) -> String {
    let mut out = String::new();
    for _ in 0..4 {
        let a = rng.below(1000) as i64;
        let b = rng.below(1000) as i64;
        let line = match rng.below(3) {
            0 => format!("{a} + {b} = {}", a + b),
            1 => format!("{a} - {b} = {}", a - b),
            _ => format!("{} * {} = {}", a % 100, b % 100, (a % 100) * (b % 100)),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_reproducible_and_look_like_their_kind() {
        for kind in [SourceKind::Prose, SourceKind::Code, SourceKind::Arithmetic] {
            let a = document(kind, &mut Rng::new(5));
            assert_eq!(a, document(kind, &mut Rng::new(5)));
            assert_ne!(a, document(kind, &mut Rng::new(6)));
        }
        assert!(document(SourceKind::Code, &mut Rng::new(1)).starts_with("def "));
        assert!(document(SourceKind::Arithmetic, &mut Rng::new(1)).contains(" = "));
        assert!(document(SourceKind::Prose, &mut Rng::new(1)).contains(". "));
    }
}
