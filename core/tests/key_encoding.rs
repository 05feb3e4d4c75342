//! Property tests of the name-to-key encoding (`LockKey`): distinct
//! (namespace, name) pairs never share an encoded key, the key's only braces
//! form the hash tag around the whole encoded name, and decoding gives the
//! pair back.
//!
//! The crate has no decoder (backends never need one), so this file has a
//! reference decoder; `decode(encode(x)) == x` for every generated `x` proves
//! that the encoding is injective.

use distlock::{LockError, LockKey, MAX_NAME_LEN};
use proptest::prelude::*;

/// Percent-decodes one part of an encoded key.
fn percent_decode(part: &str) -> Option<String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `namespace{name}` → (namespace, name).
fn decode(encoded: &str) -> Option<(String, String)> {
    let (namespace, rest) = encoded.split_once('{')?;
    let name = rest.strip_suffix('}')?;
    Some((percent_decode(namespace)?, percent_decode(name)?))
}

/// Pieces that tend to break encodings: braces, their escapes, colons,
/// percent signs, case, whitespace, control bytes, multi-byte characters.
fn tricky_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "{", "}", "{}", "}{", "%", "%7B", "%7D", "%7b", "%25", "%%", ":", "::", "a", "A", "b", "B",
        " ", "\t", "\n", "\r", "\u{1}", "\u{7f}", "é", "e\u{301}", "\u{a0}", "😀", "\u{feff}", "/",
        "*", "?", "[", "]", "\\", "\"",
    ])
}

fn tricky(max_pieces: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_piece(), 0..max_pieces).prop_map(|p| p.concat())
}

fn tricky_name() -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_piece(), 1..10).prop_map(|p| p.concat())
}

/// Any valid name: tricky pieces or arbitrary Unicode without NUL.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![tricky_name(), "[^\\x00]{1,40}"]
}

fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![tricky(6), "[^\\x00]{0,20}"]
}

fn encode(namespace: &str, name: &str) -> String {
    LockKey::new(namespace, name).unwrap().encoded().to_owned()
}

/// Variants of `name` that differ by one of the classic collision causes.
fn near_misses(name: &str) -> Vec<String> {
    let mut v = vec![
        name.to_owned(),
        format!("{name} "),
        format!(" {name}"),
        format!("{name}\n"),
        format!("{name}\t"),
        format!("{name}\u{1}"),
        format!("{name}:"),
        format!(":{name}"),
        format!("{{{name}}}"),
        format!("{name}}}"),
        format!("{{{name}"),
        format!("{name}%"),
        format!("{name}%7D"),
        format!("{name}%7d"),
        format!("{name}%25"),
        format!("{name}é"),
        format!("{name}e\u{301}"),
        name.to_uppercase(),
        name.to_lowercase(),
        name.replace('{', "%7B"),
        name.replace('}', "%7D"),
        name.replace('%', "%25"),
        name.replace(':', "%3A"),
        name.replace(' ', "%20"),
        name.replace(' ', "+"),
    ];
    v.retain(|n| !n.is_empty());
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decoding_gives_the_pair_back(ns in namespace(), name in name()) {
        let key = LockKey::new(&ns, &name).unwrap();
        prop_assert_eq!(key.name(), name.as_str());
        prop_assert_eq!(decode(key.encoded()), Some((ns, name)));
    }

    #[test]
    fn the_only_braces_are_the_hash_tag_around_the_whole_name(
        ns in namespace(),
        name in name(),
    ) {
        let encoded = encode(&ns, &name);
        prop_assert_eq!(encoded.matches('{').count(), 1, "{}", encoded);
        prop_assert_eq!(encoded.matches('}').count(), 1, "{}", encoded);
        prop_assert!(encoded.ends_with('}'), "{}", encoded);
        let open = encoded.find('{').unwrap();
        // The tag is the encoded name: non-empty, and exactly the name's part.
        let tag = &encoded[open + 1..encoded.len() - 1];
        prop_assert!(!tag.is_empty());
        prop_assert_eq!(percent_decode(tag), Some(name.clone()));
        // The same name in another namespace has the same tag (same slot).
        let other = encode(&format!("{ns}x"), &name);
        prop_assert!(other.ends_with(&encoded[open..]), "{} vs {}", other, encoded);
        // Printable ASCII only: no spaces, controls or raw non-ASCII bytes.
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_graphic()), "{}", encoded);
    }

    #[test]
    fn distinct_pairs_never_share_a_key(
        a in (namespace(), name()),
        b in (namespace(), name()),
    ) {
        if a != b {
            prop_assert_ne!(encode(&a.0, &a.1), encode(&b.0, &b.1));
        } else {
            prop_assert_eq!(encode(&a.0, &a.1), encode(&b.0, &b.1));
        }
    }

    #[test]
    fn near_miss_names_never_share_a_key(ns in tricky(3), base in name()) {
        let variants = near_misses(&base);
        for (i, x) in variants.iter().enumerate() {
            for y in &variants[i + 1..] {
                if x != y {
                    prop_assert_ne!(encode(&ns, x), encode(&ns, y), "{:?} vs {:?}", x, y);
                }
            }
        }
    }

    /// Moving characters between the namespace and the name (same
    /// concatenation, different split) never gives the same key: a prefix
    /// cannot impersonate a name.
    #[test]
    fn prefixes_cannot_collide_with_names(
        text in prop_oneof![tricky(8), "[^\\x00]{2,30}"],
        cut_a in any::<prop::sample::Index>(),
        cut_b in any::<prop::sample::Index>(),
    ) {
        let cuts: Vec<usize> = (0..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        prop_assume!(cuts.len() >= 2);
        let (a, b) = (cuts[cut_a.index(cuts.len())], cuts[cut_b.index(cuts.len())]);
        prop_assume!(a != b);
        let key_a = encode(&text[..a], &text[a..]);
        let key_b = encode(&text[..b], &text[b..]);
        prop_assert_ne!(key_a, key_b);
    }

    /// Names may be given as bytes: accepted exactly when they are valid
    /// UTF-8 of 1..=MAX_NAME_LEN bytes without NUL, and kept as given.
    #[test]
    fn byte_names_are_accepted_exactly_when_valid(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
        let valid = !bytes.is_empty()
            && std::str::from_utf8(&bytes).is_ok_and(|s| !s.contains('\0'));
        match LockKey::new("ns", &bytes) {
            Ok(key) => {
                prop_assert!(valid, "{:?} accepted", bytes);
                prop_assert_eq!(key.name().as_bytes(), &bytes[..]);
                prop_assert_eq!(decode(key.encoded()), Some(("ns".to_owned(), key.name().to_owned())));
            }
            Err(LockError::InvalidName { .. }) => prop_assert!(!valid, "{:?} refused", bytes),
            Err(other) => prop_assert!(false, "wrong error {:?}", other),
        }
    }
}

#[test]
fn length_limit_is_on_bytes_and_exact() {
    assert!(LockKey::new("", "n".repeat(MAX_NAME_LEN)).is_ok());
    assert!(matches!(
        LockKey::new("", "n".repeat(MAX_NAME_LEN + 1)),
        Err(LockError::InvalidName { .. })
    ));
    // 2048 two-byte characters are exactly the limit; one more byte is over.
    assert!(LockKey::new("", "é".repeat(MAX_NAME_LEN / 2)).is_ok());
    assert!(LockKey::new("", format!("{}a", "é".repeat(MAX_NAME_LEN / 2))).is_err());
}

#[test]
fn the_reference_decoder_is_strict() {
    assert_eq!(decode("a{b}"), Some(("a".into(), "b".into())));
    assert_eq!(decode("%7B{%7D}"), Some(("{".into(), "}".into())));
    assert_eq!(decode("a{b"), None);
    assert_eq!(decode("a{%G0}"), None);
}
