//! Connection settings: `--url` > `REDIS_URL` > the config file's `url`
//! (clap resolves the first two), the config file for everything else.

use std::path::Path;

use distlock::Locker;
use distlock_redis::{RedisBackend, RedisConfig};
use serde::Deserialize as _;

use crate::args::Connection;
use crate::exit::{Failure, CONFIG};

/// The Redis settings from the command line, the environment and the file.
pub fn resolve(conn: &Connection) -> Result<RedisConfig, Failure> {
    let file = match &conn.config {
        Some(path) => Some((path.as_path(), read(path)?)),
        None => None,
    };
    settings(conn.url.as_deref(), file)
}

/// Builds the settings from an explicit URL (flag or environment) and an
/// optional config file (its path and text).
pub fn settings(url: Option<&str>, file: Option<(&Path, String)>) -> Result<RedisConfig, Failure> {
    let config =
        match file {
            Some((path, text)) => {
                let mut table: toml::Table =
                    toml::from_str(&text).map_err(|e| toml_failure(path, &text, &e))?;
                if let Some(url) = url {
                    table.insert("url".to_owned(), toml::Value::String(url.to_owned()));
                } else if !table.contains_key("url") {
                    return Err(Failure::new(
                        CONFIG,
                        format!(
                            "{}: no `url`; give one in the file, with --url, or in REDIS_URL",
                            path.display()
                        ),
                    ));
                }
                RedisConfig::deserialize(table).map_err(|e| toml_failure(path, "", &e))?
            }
            None => match url {
                Some(url) => RedisConfig::new(url),
                None => return Err(Failure::new(
                    CONFIG,
                    "no Redis to connect to: pass --url URL, set REDIS_URL, or pass --config FILE",
                )),
            },
        };
    config.validate()?;
    Ok(config)
}

/// A locker on the configured Redis with `prefix`.
pub fn locker(config: &RedisConfig, prefix: &str) -> Result<Locker<RedisBackend>, Failure> {
    let backend = RedisBackend::from_config(config)?;
    Ok(Locker::new(backend).with_prefix(prefix)?)
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::new(CONFIG, format!("cannot read {}: {e}", path.display())))
}

/// A TOML error without the quoted source line (which may hold a password):
/// the line number and the parser's message only.
fn toml_failure(path: &Path, text: &str, e: &toml::de::Error) -> Failure {
    let line = e
        .span()
        .filter(|_| !text.is_empty())
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let at = match line {
        Some(line) => format!("{}, line {line}", path.display()),
        None => path.display().to_string(),
    };
    Failure::new(CONFIG, format!("{at}: {}", e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file(text: &str) -> Option<(&'static Path, String)> {
        Some((Path::new("distlock.toml"), text.to_owned()))
    }

    #[test]
    fn the_url_overrides_the_file_and_the_file_gives_the_rest() {
        let text = "url = \"redis://file-host\"\ncommand_timeout = \"250ms\"\n";
        let c = settings(Some("redis://flag-host:7000"), file(text)).unwrap();
        assert_eq!(c.url, "redis://flag-host:7000");
        assert_eq!(c.command_timeout, Duration::from_millis(250));
        let c = settings(None, file(text)).unwrap();
        assert_eq!(c.url, "redis://file-host");
        // A file without url is fine when the URL comes from elsewhere.
        let c = settings(Some("redis://h"), file("pool_size = 2")).unwrap();
        assert_eq!(c.pool_size, 2);
    }

    #[test]
    fn missing_or_bad_settings_are_config_failures_that_hide_passwords() {
        for (url, text) in [
            (None, None),
            (None, Some("pool_size = 2")),
            (Some("http://h"), None),
            (None, Some("url = \"redis://h\"\npool_sise = 2")),
            (None, Some("url = redis://:hunter2@h\n")),
            (None, Some("url = \"redis://:hunter2@h\"\npool_size = 0")),
        ] {
            let failure = settings(url, text.and_then(file)).unwrap_err();
            assert_eq!(failure.code, CONFIG, "{failure}");
            assert!(!failure.message.contains("hunter2"), "{failure}");
        }
    }
}
