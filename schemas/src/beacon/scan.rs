//! Slicing a beacon's events out of its text: the extent of each element of the body's `events` array,
//! as serde_json's `&RawValue` gives it (without the whitespace around it), in a body sonic-rs has
//! already parsed, so in valid JSON; with the two guards the fast parse relies on ([`MAX_DEPTH`],
//! [`MAX_NUMBER_BYTES`]).
//!
//! Two implementations that answer alike, the second checked against the first by this module's tests:
//! - [`bytes`], a loop over the text's bytes (any target). Its branches depend on each token, and
//!   their mispredictions are likely most of its time (the benchmark machine shows no branch counters);
//! - [`blocks`] (x86_64 with SSE2, which every x86_64 CPU and Rust's hosted x86_64 targets have), a scan
//!   of 64-byte blocks: the quotes, backslashes, brackets and number bytes of a block found at once by
//!   SSE2 compares, the strings by a prefix XOR of their quotes, and only the brackets outside strings
//!   visited one by one. A prototype of it sliced wrk's 20-event beacons in 0.89 µs against the byte
//!   loop's 1.74; in the fast parse, a beacon's parse takes 2.8 µs against 4.1 (BENCHMARKS.md §27).
//!
//! The block scan's intrinsics are the only `unsafe` code of `schemas` (the crate denies it elsewhere):
//! one block, on 16-byte loads from a 64-byte array.

/// The deepest nesting the fast parse takes (the body's object is level 1). serde_json refuses 128
/// levels of the envelope's values, or below an event (parsed from its own text); sonic-rs takes 254.
pub(super) const MAX_DEPTH: usize = 100;

/// The longest number the fast parse takes. sonic-rs reads at most about four digits of an exponent
/// (`1e10120` as `1e1012`), which a thousand digits of mantissa can make up for: `0.` and 999 zeros
/// then `1e10120` is 1e12 to it, out of range to serde_json. Players' numbers are at most about 25
/// bytes (`-2.2250738585072014e-308`).
pub(super) const MAX_NUMBER_BYTES: usize = 64;

/// The texts of the elements of the `events` array of `text`, a JSON object sonic-rs parsed: the
/// `events_at`-th of the object's values that are arrays or objects, counted from 0 in the text's order
/// (which sonic-rs's document keeps, so the caller counts them there, keys unescaped). `None` where the
/// exact parse must decide: nesting of [`MAX_DEPTH`] levels or more, or a number longer than
/// [`MAX_NUMBER_BYTES`], anywhere; or no such value, or an object there.
pub(super) fn event_texts(text: &str, events_at: usize) -> Option<Vec<&str>> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        blocks::event_texts(text, events_at)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        bytes::event_texts(text, events_at)
    }
}

/// The byte loop: any target, and the reference the block scan is tested against.
pub(super) mod bytes {
    use super::{MAX_DEPTH, MAX_NUMBER_BYTES};

    /// [`super::event_texts`], a byte at a time.
    #[cfg_attr(all(target_arch = "x86_64", target_feature = "sse2"), allow(dead_code))]
    pub(in crate::beacon) fn event_texts(text: &str, events_at: usize) -> Option<Vec<&str>> {
        let b = text.as_bytes();
        let mut i = skip_whitespace(b, 0);
        if b.get(i) != Some(&b'{') {
            return None;
        }
        i += 1;
        // The object's values that are arrays or objects, passed so far.
        let mut containers = 0;
        let mut events = None;
        loop {
            i = skip_whitespace(b, i);
            match *b.get(i)? {
                b'}' => return events,
                b',' => {
                    i += 1;
                    continue;
                }
                b'"' => {}
                _ => return None,
            }
            i = skip_whitespace(b, string_end(b, i)?);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_whitespace(b, i + 1);
            let container = matches!(b.get(i), Some(b'{' | b'['));
            if !container || containers != events_at {
                containers += usize::from(container);
                i = value_end(b, i, 1)?;
                continue;
            }
            containers += 1;
            if b.get(i) != Some(&b'[') {
                return None;
            }
            let mut list = Vec::new();
            i += 1;
            loop {
                i = skip_whitespace(b, i);
                match *b.get(i)? {
                    b']' => break,
                    b',' => i += 1,
                    _ => {
                        let end = value_end(b, i, 2)?;
                        list.push(text.get(i..end)?);
                        i = end;
                    }
                }
            }
            events = Some(list);
            i += 1;
        }
    }

    /// The index past JSON whitespace from `i`.
    pub(in crate::beacon) fn skip_whitespace(b: &[u8], mut i: usize) -> usize {
        while matches!(b.get(i), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            i += 1;
        }
        i
    }

    /// The index past the string that opens at `i` (a `"`), escapes skipped.
    fn string_end(b: &[u8], i: usize) -> Option<usize> {
        let mut j = i + 1;
        loop {
            match *b.get(j)? {
                b'"' => return Some(j + 1),
                b'\\' => j += 2,
                _ => j += 1,
            }
        }
    }

    /// The index past the value that begins at `i`, `depth` levels deep; `None` at [`MAX_DEPTH`] levels
    /// or at a number of more than [`MAX_NUMBER_BYTES`].
    pub(in crate::beacon) fn value_end(b: &[u8], mut i: usize, depth: usize) -> Option<usize> {
        match *b.get(i)? {
            b'"' => string_end(b, i),
            b'{' | b'[' => {
                let mut level = depth;
                // The bytes of the number (or literal) being passed.
                let mut run = 0;
                loop {
                    match *b.get(i)? {
                        b'"' => {
                            i = string_end(b, i)?;
                            continue;
                        }
                        b'{' | b'[' => {
                            level += 1;
                            if level >= MAX_DEPTH {
                                return None;
                            }
                        }
                        b'}' | b']' => {
                            level -= 1;
                            if level == depth {
                                return Some(i + 1);
                            }
                        }
                        b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E' => {
                            run += 1;
                            if run > MAX_NUMBER_BYTES {
                                return None;
                            }
                            i += 1;
                            continue;
                        }
                        _ => {}
                    }
                    run = 0;
                    i += 1;
                }
            }
            _ => {
                let start = i;
                while !matches!(b.get(i), None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t')) {
                    i += 1;
                }
                // A scalar is never empty in JSON sonic-rs accepted: not relying on that, no scan stalls.
                (i > start && i - start <= MAX_NUMBER_BYTES).then_some(i)
            }
        }
    }
}

/// The block scan (x86_64 with SSE2).
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(super) mod blocks {
    use super::bytes::{skip_whitespace, value_end};
    use super::{MAX_DEPTH, MAX_NUMBER_BYTES};

    /// One bit a byte of a 64-byte block (bit `k` for byte `k`).
    #[derive(Default)]
    struct Masks {
        quotes: u64,
        backslashes: u64,
        /// `{` and `[`.
        opens: u64,
        /// `}` and `]`.
        closes: u64,
        /// Bytes a number is written with: digits, `-`, `+`, `.`, `e`, `E`.
        numbers: u64,
    }

    /// The masks of `block`, sixteen bytes a step.
    #[allow(unsafe_code)]
    fn masks(block: &[u8; 64]) -> Masks {
        use std::arch::x86_64::{
            _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        let mut m = Masks::default();
        for (k, chunk) in block.chunks_exact(16).enumerate() {
            // SAFETY: this module is built only where SSE2 is enabled for the whole build (its `cfg`),
            // which a hosted x86_64 target always has (SSE2 is part of every x86_64 CPU), so these
            // intrinsics run on any CPU the binary runs on; they need `unsafe` only because the
            // function calling them does not list the feature itself. The one load reads the 16 bytes
            // of `chunk` (a 16-byte slice of `block`), and needs no alignment.
            let [quotes, backslashes, opens, closes, numbers] = unsafe {
                let v = _mm_loadu_si128(chunk.as_ptr().cast());
                let is = |byte: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8));
                // `{` and `[`, `}` and `]`, `e` and `E` differ by 0x20 only.
                let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
                let folded_is = |byte: u8| _mm_cmpeq_epi8(folded, _mm_set1_epi8(byte as i8));
                // Signed compares: bytes from 0x80 up are negative, below `0`.
                let digits = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(b'/' as i8)), _mm_cmplt_epi8(v, _mm_set1_epi8(b':' as i8)));
                let numbers = _mm_or_si128(_mm_or_si128(digits, _mm_or_si128(is(b'-'), is(b'+'))), _mm_or_si128(is(b'.'), folded_is(b'e')));
                [is(b'"'), is(b'\\'), folded_is(b'{'), folded_is(b'}'), numbers].map(|lanes| _mm_movemask_epi8(lanes) as u16)
            };
            let shift = 16 * k;
            m.quotes |= u64::from(quotes) << shift;
            m.backslashes |= u64::from(backslashes) << shift;
            m.opens |= u64::from(opens) << shift;
            m.closes |= u64::from(closes) << shift;
            m.numbers |= u64::from(numbers) << shift;
        }
        m
    }

    /// Each bit set from a set bit of `x` up to the next (exclusive), and so on: the bytes from an
    /// opening quote up to its closing one.
    fn prefix_xor(mut x: u64) -> u64 {
        x ^= x << 1;
        x ^= x << 2;
        x ^= x << 4;
        x ^= x << 8;
        x ^= x << 16;
        x ^= x << 32;
        x
    }

    /// [`super::event_texts`], 64 bytes a step.
    pub(in crate::beacon) fn event_texts(text: &str, events_at: usize) -> Option<Vec<&str>> {
        let b = text.as_bytes();
        let mut events = Vec::new();
        // Brackets open, the body's object being level 1.
        let mut level = 0usize;
        // The object's values that are arrays or objects, opened so far.
        let mut containers = 0;
        // Inside the events array: where its next element may begin.
        let mut next: Option<usize> = None;
        let mut event_start = 0;
        let mut found = false;
        // All ones when the last block ended inside a string.
        let mut in_string = 0u64;
        // 1 when the last block ended with a backslash that escapes this block's first byte.
        let mut escape_next = 0u64;
        // Number bytes outside strings at the end of the blocks so far.
        let mut number_run = 0;
        let mut at = 0;
        while at < b.len() {
            let mut tail = [b' '; 64];
            let block: &[u8; 64] = match b.get(at..at + 64) {
                Some(full) => full.try_into().ok()?,
                None => {
                    let rest = b.get(at..)?;
                    tail.get_mut(..rest.len())?.copy_from_slice(rest);
                    &tail
                }
            };
            let m = masks(block);
            let mut quotes = m.quotes;
            if m.backslashes != 0 || escape_next != 0 {
                // Rare in players' bodies: the escaped bytes worked out in order.
                let mut escaped = escape_next;
                escape_next = 0;
                let mut rest = m.backslashes;
                while rest != 0 {
                    let k = rest.trailing_zeros();
                    rest &= rest - 1;
                    if escaped & (1 << k) == 0 {
                        if k == 63 {
                            escape_next = 1;
                        } else {
                            escaped |= 1 << (k + 1);
                        }
                    }
                }
                quotes &= !escaped;
            }
            let inside = prefix_xor(quotes) ^ in_string;
            in_string = 0u64.wrapping_sub(inside >> 63);

            // A run of number bytes is cut by any other byte, so one longer than 64 bytes crosses a block's
            // edge: the run a block begins with, added to the one the blocks before ended with.
            let numbers = m.numbers & !inside;
            let leading = numbers.trailing_ones() as usize;
            if number_run + leading > MAX_NUMBER_BYTES {
                return None;
            }
            number_run = if leading == 64 { number_run + 64 } else { numbers.leading_ones() as usize };

            let mut brackets = (m.opens | m.closes) & !inside;
            while brackets != 0 {
                let k = brackets.trailing_zeros();
                brackets &= brackets - 1;
                let at_bracket = at + k as usize;
                if m.opens >> k & 1 == 1 {
                    level += 1;
                    if level >= MAX_DEPTH {
                        return None;
                    }
                    if level == 2 {
                        if containers == events_at {
                            if b.get(at_bracket) != Some(&b'[') {
                                return None;
                            }
                            next = Some(at_bracket + 1);
                        }
                        containers += 1;
                    } else if let (3, Some(from)) = (level, next) {
                        scalars(text, from, at_bracket, &mut events)?;
                        event_start = at_bracket;
                    }
                } else {
                    match (level, next) {
                        (3, Some(_)) => {
                            events.push(text.get(event_start..at_bracket + 1)?);
                            next = Some(at_bracket + 1);
                        }
                        (2, Some(from)) => {
                            scalars(text, from, at_bracket, &mut events)?;
                            next = None;
                            found = true;
                        }
                        _ => {}
                    }
                    level = level.checked_sub(1)?;
                }
            }
            at += 64;
        }
        found.then_some(events)
    }

    /// The elements of the events array from `from` up to `to` (the next array or object, or the array's
    /// end), which hold no brackets outside strings: strings, numbers and literals, and the commas and
    /// whitespace between them. Events that validation refuses, but sliced as any other.
    fn scalars<'t>(text: &'t str, from: usize, to: usize, events: &mut Vec<&'t str>) -> Option<()> {
        let b = text.as_bytes();
        let mut i = from;
        loop {
            i = skip_whitespace(b, i);
            if i >= to {
                return (i == to).then_some(());
            }
            if b.get(i) == Some(&b',') {
                i += 1;
                continue;
            }
            let end = value_end(b, i, 2)?;
            if end > to {
                return None;
            }
            events.push(text.get(i..end)?);
            i = end;
        }
    }
}

#[cfg(all(test, target_arch = "x86_64", target_feature = "sse2"))]
mod tests {
    use super::{blocks, bytes};

    /// Bodies whose strings, escapes, brackets and numbers fall on and across the block scan's 64-byte
    /// edges (a padding string before them shifts them a byte at a time), and the cases where both
    /// scans must step aside: the block scan answers as the byte loop on each.
    #[test]
    fn the_block_scan_answers_as_the_byte_loop() {
        let events = [
            r#"{"view_id":"v","seq":1,"type":"heartbeat","ts":1700000000000}"#.to_owned(),
            r#"{"x":"a \" quoted { and } [ and ] \\","y":"\\\\"}"#.to_owned(),
            r#"{"x":"\\","y":["\\\"",{"z":"}"}]}"#.to_owned(),
            r#"7"#.to_owned(),
            r#""a string, with [brackets] and \"quotes\"""#.to_owned(),
            r#"true"#.to_owned(),
            r#"[1,[2,{"a":[]}],-3.5e-7]"#.to_owned(),
            format!(r#"{{"n":{}}}"#, "1".repeat(64)),
            format!(r#"{{"n":{}}}"#, "1".repeat(65)),
            format!(r#"{{"s":"{}"}}"#, "1".repeat(200)),
            format!(r#"{{"d":{}{}}}"#, "[".repeat(96), "]".repeat(96)),
            format!(r#"{{"d":{}{}}}"#, "[".repeat(97), "]".repeat(97)),
        ];
        let mut checked = 0;
        for pad in 0..140 {
            for (i, event) in events.iter().enumerate() {
                for others in ["", r#","after":{"k":[1,2]}"#] {
                    let list = [events[0].as_str(), event, events[(i + 1) % events.len()].as_str()].join(" ,\n ");
                    let before = format!(r#""pad":"{}\\","x":[{{}}],"n":-12.5e3,"#, "p".repeat(pad));
                    for (body, events_at) in [
                        (format!(r#"{{{before}"events":[ {list} ]{others}}}"#), 1),
                        (format!(r#" {{ "events" : [{list}] , {before} "k":"\\\\"}} "#), 0),
                        (format!(r#"{{{before}"events":[]{others}}}"#), 1),
                    ] {
                        assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "valid JSON: {body}");
                        assert_eq!(blocks::event_texts(&body, events_at), bytes::event_texts(&body, events_at), "{body}");
                        checked += usize::from(bytes::event_texts(&body, events_at).is_some());
                    }
                }
            }
        }
        // Most bodies are sliced (not all stepped aside).
        assert!(checked > 140 * events.len() * 2, "{checked}");
        // A number of exactly 64 bytes is taken, 65 not; 99 levels are, 100 not (both scans).
        let body = |event: &str| format!(r#"{{"events":[{event}]}}"#);
        for (event, taken) in [(&events[7], true), (&events[8], false), (&events[10], true), (&events[11], false)] {
            assert_eq!(blocks::event_texts(&body(event), 0).is_some(), taken, "{event}");
        }
        // Bodies shorter than a block, events that are all scalars, the guards outside `events`, a
        // number that fills a whole block and more, at every offset.
        let digits = |n: usize| "1".repeat(n);
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        for pad in 0..70 {
            let p = "p".repeat(pad);
            for (body, taken) in [
                (r#"{"events":[1,{"a":"]"},"x"]}"#.to_owned(), true),
                (r#"{"events":[]}"#.to_owned(), true),
                (r#"{"events":[1,"[",true]}"#.to_owned(), true),
                (r#"{"events":{}}"#.to_owned(), false),
                (format!(r#"{{"p":"{p}","n":{},"events":[]}}"#, digits(64)), true),
                (format!(r#"{{"p":"{p}","n":{},"events":[]}}"#, digits(65)), false),
                (format!(r#"{{"p":"{p}","x":{},"events":[]}}"#, deep(98)), true),
                (format!(r#"{{"p":"{p}","x":{},"events":[]}}"#, deep(99)), false),
                (format!(r#"{{"p":"{p}","events":[{}]}}"#, digits(130)), false),
                (format!(r#"{{"p":"{p}","events":["{}",{}]}}"#, digits(130), digits(64)), true),
            ] {
                assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok(), "valid JSON: {body}");
                let events_at = usize::from(body.contains(r#""x":["#));
                assert_eq!(blocks::event_texts(&body, events_at), bytes::event_texts(&body, events_at), "{body}");
                assert_eq!(blocks::event_texts(&body, events_at).is_some(), taken, "{body}");
            }
        }
    }
}
