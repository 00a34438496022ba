//! Loading the configuration: flags, then environment variables, then the `--config` file, then
//! defaults, plus `PORT` for platforms that set it; and the effective configuration as
//! `pgws config check` prints it.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use super::{Config, ConfigError};

impl Config {
    /// Parses flags and environment, then fills every setting neither of them gave from the
    /// `--config` file, if there is one.
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let (matches, _) = Self::matches(args)?;
        Self::resolve(&matches)
    }

    /// The configuration the matches give, with `PORT` standing in for a listen address that was
    /// not given.
    fn resolve(matches: &ArgMatches) -> Result<Config, ConfigError> {
        let mut config = Config::from_arg_matches(matches)?;
        if let Some(port) = Self::port(matches)? {
            config.listen = ([0, 0, 0, 0], port).into();
        }
        Ok(config)
    }

    fn port(matches: &ArgMatches) -> Result<Option<u16>, ConfigError> {
        if matches.value_source("listen") != Some(ValueSource::DefaultValue) {
            return Ok(None);
        }
        let Some(port) = std::env::var_os("PORT") else {
            return Ok(None);
        };
        let text = port.to_string_lossy().into_owned();
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| ConfigError::Port(text))
    }

    /// Every setting with its value and where it came from, as TOML a `--config` file would hold;
    /// secrets (values hidden from `--help`) masked.
    pub fn effective<I, T>(args: I) -> Result<String, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let (matches, file) = Self::matches(args)?;
        let config = Self::resolve(&matches)?;
        let port = Self::port(&matches)?;
        let mut out = String::new();
        for arg in Config::command().get_arguments() {
            let Some(name) = arg.get_long() else { continue };
            let id = arg.get_id().as_str();
            if name == "config" {
                continue;
            }
            let values: Vec<String> = matches
                .get_raw(id)
                .map(|v| v.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) if file.iter().any(|f| f == name) => "file",
                Some(ValueSource::CommandLine) => "flag",
                Some(ValueSource::EnvVariable) => "environment",
                Some(ValueSource::DefaultValue) => "default",
                _ => "unset",
            };
            if values.is_empty() {
                out.push_str(&format!("# {name}: not set\n"));
                continue;
            }
            let shown = if arg.is_hide_env_values_set() {
                "\"********\"".to_owned()
            } else if arg.get_num_args().is_some_and(|n| n.max_values() > 1)
                || arg.get_value_delimiter().is_some()
            {
                let items: Vec<String> = values.iter().map(|v| toml_value(v)).collect();
                format!("[{}]", items.join(", "))
            } else {
                toml_value(&values[0])
            };
            let (shown, source) = match port {
                Some(_) if name == "listen" => (format!("\"{}\"", config.listen), "PORT"),
                _ => (shown, source),
            };
            out.push_str(&format!("{name} = {shown}  # {source}\n"));
        }
        Ok(out)
    }

    /// The matches of flags, environment and the `--config` file together, and the names of the
    /// settings the file gave.
    fn matches<I, T>(args: I) -> Result<(ArgMatches, Vec<String>), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Config::command();
        let matches = command.clone().try_get_matches_from(&argv)?;
        let Some(path) = matches.get_one::<PathBuf>("config").cloned() else {
            return Ok((matches, Vec::new()));
        };
        let (from_file, names) = file_args(&command, &matches, &path)?;
        // Right after the program name: the file's settings are flags of pgws itself, never of a
        // subcommand.
        let mut with_file = argv;
        let at = with_file.len().min(1);
        with_file.splice(at..at, from_file);
        let matches =
            command
                .try_get_matches_from(&with_file)
                .map_err(|e| ConfigError::Setting {
                    path,
                    // clap's first line names the flag and the value; the rest is advice for a
                    // command line.
                    message: e
                        .to_string()
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim_start_matches("error: ")
                        .to_owned(),
                })?;
        Ok((matches, names))
    }
}

/// The `--config` file's settings as flags, for those neither a flag nor the environment gave; and
/// their names.
fn file_args(
    command: &clap::Command,
    matches: &ArgMatches,
    path: &PathBuf,
) -> Result<(Vec<OsString>, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|source| ConfigError::Toml {
        path: path.clone(),
        source,
    })?;
    let setting = |message: String| ConfigError::Setting {
        path: path.clone(),
        message,
    };
    let mut argv: Vec<OsString> = Vec::new();
    let mut names = Vec::new();
    for (key, value) in table {
        let name = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
            .ok_or_else(|| setting(format!("unknown setting `{key}`")))?;
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        names.push(name.clone());
        let flag = format!("--{name}");
        let takes_values = arg.get_action().takes_values();
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(setting(format!("`{key}` cannot be {}", other.type_str()))),
        };
        match (&value, takes_values) {
            (toml::Value::Boolean(on), false) => {
                if *on {
                    argv.push(flag.into());
                }
            }
            (_, false) => return Err(setting(format!("`{key}` must be true or false"))),
            (toml::Value::Array(items), true) => {
                for item in items {
                    argv.push(flag.clone().into());
                    argv.push(scalar(item)?.into());
                }
            }
            (v, true) => {
                argv.push(flag.into());
                argv.push(scalar(v)?.into());
            }
        }
    }
    Ok((argv, names))
}

/// A value as TOML: numbers and booleans bare, everything else a string.
fn toml_value(text: &str) -> String {
    if text == "true" || text == "false" || text.parse::<f64>().is_ok_and(f64::is_finite) {
        text.to_owned()
    } else {
        toml::Value::String(text.to_owned()).to_string()
    }
}
