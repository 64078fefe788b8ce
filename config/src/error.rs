//! The one error type of this crate and its operator-facing messages.

use std::error::Error as _;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue};

use crate::{CONFIG_ENV, FIELDS};

/// Everything that can go wrong while loading the configuration. Each
/// message names the offending key, flag, variable or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Command-line problem, or a request for `--help` / `--version`.
    /// [`ConfigError::exit`] (or clap's own `exit`) prints it properly.
    #[error("{0}")]
    Cli(#[from] clap::Error),

    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The config file is not valid TOML.
    #[error("config file {} is not valid TOML: {message}", .path.display())]
    ParseFile { path: PathBuf, message: String },

    /// The config file has keys that are not settings.
    #[error("config file {}: {}", .path.display(), describe_unknown("key", .keys, false))]
    UnknownKeys { path: PathBuf, keys: Vec<String> },

    /// A value in the config file has the wrong type or form.
    #[error("config file {}: invalid value for `{key}`: {message}", .path.display())]
    FileValue {
        path: PathBuf,
        key: &'static str,
        message: String,
    },

    /// `TANDEM_*` environment variables that are not settings.
    #[error("{}", describe_unknown("environment variable", .vars, true))]
    UnknownEnv { vars: Vec<String> },

    /// A `TANDEM_*` environment variable holds a value that does not parse.
    #[error("environment variable {var}: {message}")]
    EnvValue { var: String, message: String },

    /// A value parsed but breaks a rule (range, format, length).
    #[error("{message}{}", in_parens(.origin))]
    Invalid {
        /// The setting (TOML key / `Config` field) at fault.
        key: &'static str,
        message: String,
        /// Where the value came from, e.g. "set by flag --match-burst".
        origin: Option<String>,
    },
}

impl ConfigError {
    /// Prints the error and exits: clap errors through clap (help and
    /// version to stdout with code 0, usage errors with code 2), anything
    /// else as `tandem: <message>` on stderr with code 2.
    pub fn exit(&self) -> ! {
        match self {
            ConfigError::Cli(err) => err.exit(),
            other => {
                eprintln!("tandem: {other}");
                std::process::exit(2)
            }
        }
    }

    /// The setting at fault, when there is a single one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::FileValue { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::EnvValue { var, .. } => FIELDS
                .iter()
                .find(|field| field.env == var.as_str())
                .map(|field| field.key),
            _ => None,
        }
    }

    pub(crate) fn unknown_keys(path: &Path, keys: Vec<String>) -> Self {
        ConfigError::UnknownKeys {
            path: path.to_owned(),
            keys,
        }
    }

    pub(crate) fn unknown_env(vars: Vec<String>) -> Self {
        ConfigError::UnknownEnv { vars }
    }
}

fn in_parens(origin: &Option<String>) -> String {
    match origin {
        Some(origin) => format!(" ({origin})"),
        None => String::new(),
    }
}

/// "unknown key `a` (did you mean `b`?)" and the like, for file keys or
/// environment variables.
fn describe_unknown(what: &str, names: &[String], env: bool) -> String {
    let known: Vec<&str> = if env {
        FIELDS
            .iter()
            .map(|field| field.env)
            .chain([CONFIG_ENV])
            .collect()
    } else {
        FIELDS.iter().map(|field| field.key).collect()
    };
    let listed: Vec<String> = names
        .iter()
        .map(|name| {
            let shown = if env {
                name.clone()
            } else {
                format!("`{name}`")
            };
            match closest(name, &known) {
                Some(guess) if env => format!("{shown} (did you mean {guess}?)"),
                Some(guess) => format!("{shown} (did you mean `{guess}`?)"),
                None => shown,
            }
        })
        .collect();
    let plural = if names.len() == 1 { "" } else { "s" };
    let help = if env {
        "; tandem refuses TANDEM_* variables it does not know, so that typos do not go \
         unnoticed (see `tandem --help` for the list)"
    } else {
        "; keys are the flag names with underscores (see `tandem --help` for the list)"
    };
    format!("unknown {what}{plural} {}{help}", listed.join(", "))
}

/// The known name nearest to `name`, if near enough to be a likely typo.
fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    let limit = (name.len() / 4).max(2);
    known
        .iter()
        .map(|candidate| {
            (
                edit_distance(&name, &candidate.to_ascii_lowercase()),
                *candidate,
            )
        })
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance, counted in chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// A one-line reason for a clap parse failure of an environment value,
/// without echoing the value when it is secret.
pub(crate) fn clap_reason(err: &clap::Error, value: &str, secret: bool) -> String {
    let subject = if secret {
        "the value".to_owned()
    } else {
        format!("'{value}'")
    };
    if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
        return format!("{subject} is not one of: {}", valid.join(", "));
    }
    if let Some(source) = err.source() {
        return format!("{subject} is invalid: {source}");
    }
    if secret {
        return format!("{subject} is invalid");
    }
    // Fall back on clap's own wording, first line, without its prefix.
    let rendered = err.to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_changes() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("bind", "bind"), 0);
        assert_eq!(edit_distance("bnd", "bind"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggests_near_names_only() {
        let known = ["match_burst", "bind"];
        assert_eq!(closest("match_brust", &known), Some("match_burst"));
        assert_eq!(closest("something_else", &known), None);
    }
}
