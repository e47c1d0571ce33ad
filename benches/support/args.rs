//! Command-line options of the form `--name value`, read on demand, with
//! a check that no unknown option slipped in.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;

/// Parsed `--name value` options.
pub struct Args {
    values: BTreeMap<String, String>,
}

impl Args {
    /// Reads options; a `--name` followed by another option (or nothing)
    /// is a switch. Cargo's own `--bench` switch is ignored.
    pub fn from_words(words: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut values = BTreeMap::new();
        let mut words = words.peekable();
        while let Some(word) = words.next() {
            let Some(name) = word.strip_prefix("--") else {
                return Err(format!("unexpected `{word}`; options look like `--name value`"));
            };
            if name == "bench" {
                continue;
            }
            let value = match words.peek() {
                Some(next) if !next.starts_with("--") => words.next().unwrap_or_default(),
                _ => "true".to_string(),
            };
            values.insert(name.to_string(), value);
        }
        Ok(Args { values })
    }

    /// The raw value of an option.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// An option parsed as `T`, or `default` when absent.
    pub fn parse<T: FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| format!("--{name}: cannot read `{text}`")),
        }
    }

    /// Whether a switch was given.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "false")
    }

    /// A comma-separated list (empty when absent).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split(',').filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default()
    }

    /// A comma-separated list of `ip:port`.
    pub fn addrs(&self, name: &str) -> Result<Vec<SocketAddr>, String> {
        self.list(name)
            .iter()
            .map(|a| a.parse().map_err(|_| format!("--{name}: `{a}` is not an ip:port")))
            .collect()
    }

    /// Fails on an option that is not in `known`: a typo, most likely.
    pub fn check(&self, known: &[&str]) -> Result<(), String> {
        match self.values.keys().find(|k| !known.contains(&k.as_str())) {
            Some(name) => Err(format!("unknown option --{name}; run without a scenario for help")),
            None => Ok(()),
        }
    }
}
