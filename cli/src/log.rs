//! Logging: the library's `tracing` events (a failed lease renewal, a lost
//! lease, a release that failed…) as lines on stderr.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

/// Installs the stderr subscriber: `RUST_LOG` when it is set and not empty,
/// else the level of `-v` ([`level`]).
pub fn init(verbose: u8) {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(directives) if !directives.trim().is_empty() => {
            EnvFilter::builder().parse(&directives).unwrap_or_else(|e| {
                eprintln!("distlock: ignoring RUST_LOG={directives:?}: {e}");
                EnvFilter::default().add_directive(level(verbose).into())
            })
        }
        _ => EnvFilter::default().add_directive(level(verbose).into()),
    };
    // A second subscriber (never installed here) would be an error; there
    // is nothing better to do than to go on without.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

/// The level of `-v` given `count` times: warnings by default, then info,
/// debug, trace.
pub fn level(count: u8) -> LevelFilter {
    match count {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_v_is_one_level_more() {
        assert_eq!(level(0), LevelFilter::WARN);
        assert_eq!(level(1), LevelFilter::INFO);
        assert_eq!(level(2), LevelFilter::DEBUG);
        assert_eq!(level(9), LevelFilter::TRACE);
    }
}
