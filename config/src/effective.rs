//! `tandem check-config`: the effective settings, each with where its value
//! came from.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::{
    shown_defaults, Config, IpNet, LogFormat, Origin, PortRange, RedisUrl, Secret, FIELDS,
};

/// A validated configuration and where each of its settings came from
/// (what `tandem check-config` prints: its `Display`, one setting a line).
#[derive(Clone, Debug)]
pub struct Effective {
    pub(crate) config: Config,
    /// One per setting, in declaration order.
    pub(crate) origins: Vec<Origin>,
    /// Where the config file's path came from (`Default`: there is none).
    pub(crate) config_file_origin: Origin,
}

/// One setting of an [`Effective`] configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The `--help` section it is listed under.
    pub section: &'static str,
    /// TOML key.
    pub key: &'static str,
    /// The value as `check-config` prints it, secrets redacted (`[redacted]`); a setting
    /// without a value shows what `--help` says happens then, in parentheses.
    pub value: String,
    pub origin: Origin,
}

impl Effective {
    /// The configuration itself.
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn into_config(self) -> Config {
        self.config
    }

    /// Where the setting `key` (a TOML key) came from; `None` for an unknown key.
    pub fn origin(&self, key: &str) -> Option<Origin> {
        let index = FIELDS.iter().position(|field| field.key == key)?;
        self.origins.get(index).copied()
    }

    /// Every setting, in `--help` order.
    pub fn settings(&self) -> Vec<Setting> {
        FIELDS
            .iter()
            .zip(self.config.shown_values())
            .zip(shown_defaults())
            .zip(&self.origins)
            .map(|(((field, value), default), origin)| Setting {
                section: field.section,
                key: field.key,
                value: value.unwrap_or_else(|| format!("({default})")),
                origin: *origin,
            })
            .collect()
    }
}

impl fmt::Display for Effective {
    /// A `# config file` line, then per `--help` section a `# Section` line
    /// and one `key  origin  value` line per setting.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.config.config_file {
            Some(path) => writeln!(
                f,
                "# config file: {} ({})",
                path.display(),
                self.config_file_origin
            )?,
            None => writeln!(f, "# config file: none")?,
        }
        let settings = self.settings();
        let width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
        let mut section = "";
        for setting in &settings {
            if setting.section != section {
                section = setting.section;
                writeln!(f, "# {section}")?;
            }
            writeln!(
                f,
                "{:<width$}  {:<7}  {}",
                setting.key, setting.origin, setting.value
            )?;
        }
        Ok(())
    }
}

/// How `check-config` shows a setting's value; `None` for no value. Secrets
/// show through their own `Display`, which redacts them.
pub(crate) trait Show {
    fn show(&self) -> Option<String>;
}

macro_rules! show_by_display {
    ($($t:ty),+) => {
        $(impl Show for $t {
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        })+
    };
}

show_by_display!(
    bool, u16, u32, u64, usize, String, SocketAddr, IpAddr, IpNet, LogFormat, PortRange, Secret,
    RedisUrl
);

impl Show for PathBuf {
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

impl<T: Show> Show for Option<T> {
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(Show::show)
    }
}

impl<T: Show> Show for Vec<T> {
    fn show(&self) -> Option<String> {
        let shown: Vec<String> = self.iter().filter_map(Show::show).collect();
        (!shown.is_empty()).then(|| shown.join(","))
    }
}
