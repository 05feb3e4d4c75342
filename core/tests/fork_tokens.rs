//! Issue 10, kind 8: lock tokens stay unique across `fork()`.
//!
//! A user-space generator is copied into the child with its state, so after
//! a fork parent and child would draw the same next token (and could then
//! extend or release each other's locks). A real fork, through the `fork`
//! crate's safe wrapper; the child only draws a token, writes it to a pipe
//! and exits.
#![cfg(unix)]

use std::io::{Read, Write};

use distlock::LockToken;
use fork::{fork, Fork};

/// The next token drawn in the parent and in a forked child differ, after
/// the parent's thread drew tokens before the fork.
#[test]
fn parent_and_forked_child_draw_different_tokens() {
    for round in 0..5 {
        // Any earlier draw on this thread (an earlier lock).
        let _earlier = LockToken::generate();
        let (mut reader, mut writer) = std::io::pipe().expect("pipe");
        match fork().expect("fork") {
            Fork::Child => {
                drop(reader);
                let token = LockToken::generate();
                let ok = writer.write_all(token.as_hex().as_bytes()).is_ok();
                drop(writer);
                std::process::exit(if ok { 0 } else { 1 });
            }
            Fork::Parent(child) => {
                drop(writer);
                let parent = LockToken::generate();
                let mut child_hex = String::new();
                reader.read_to_string(&mut child_hex).expect("read pipe");
                assert_eq!(child_hex.len(), 32, "child {child} sent {child_hex:?}");
                assert_ne!(
                    parent.as_hex(),
                    child_hex,
                    "round {round}: parent and forked child drew the same token"
                );
            }
        }
    }
}
