//! `seaportd --config FILE.toml`: every flag as a key, the long flag
//! without its dashes (`port-range = "20000-29999"`). The file's settings
//! go before the command line's, so a flag given wins (the last of a flag
//! wins), and a setting whose environment variable is set is left out, so
//! the environment wins too: flags, then environment, then the file, then
//! the defaults.

use std::ffi::OsString;

use clap::{ArgAction, ArgMatches, Command};

/// Flags that are not settings, and so not keys of the file.
const NOT_SETTINGS: [&str; 4] = ["config", "print-config", "help", "version"];

/// `argv` with the settings of the file named by `--config` (or
/// SEAPORT_CONFIG) put before the command line's own; an error that names
/// what to fix when the file cannot be read or holds an unknown key.
pub(crate) fn with_file(command: &Command, argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&argv) else {
        return Ok(argv);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("--config {}: {e}", path.to_string_lossy()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("--config {}: {e}", path.to_string_lossy()))?;
    let mut settings = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_SETTINGS.contains(&key.as_str()))
            .ok_or_else(|| {
                format!(
                    "--config {}: unknown key {}; keys are seaportd's long flags without the dashes, such as listen or port-range (seaportd --help)",
                    path.to_string_lossy(),
                    seaport::quote(&key)
                )
            })?;
        if arg
            .get_env()
            .is_some_and(|env| std::env::var_os(env).is_some())
        {
            continue;
        }
        let flag = format!("--{key}");
        match value {
            toml::Value::Boolean(true) => settings.push(OsString::from(flag)),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => settings.push(format!("{flag}={s}").into()),
            toml::Value::Integer(n) => settings.push(format!("{flag}={n}").into()),
            toml::Value::Float(n) => settings.push(format!("{flag}={n}").into()),
            toml::Value::Array(items) => {
                let items: Vec<String> = items
                    .iter()
                    .map(|i| match i {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                settings.push(format!("{flag}={}", items.join(",")).into());
            }
            other => {
                return Err(format!(
                    "--config {}: `{key}` is a {}; give a string, a number, true or a list",
                    path.to_string_lossy(),
                    other.type_str()
                ));
            }
        }
    }
    let mut all = Vec::with_capacity(argv.len() + settings.len());
    let mut argv = argv.into_iter();
    all.extend(argv.next());
    all.extend(settings);
    all.extend(argv);
    Ok(all)
}

/// The file `--config PATH`, `--config=PATH` or SEAPORT_CONFIG names.
fn config_path(argv: &[OsString]) -> Option<OsString> {
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return args.next().cloned();
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.into());
        }
    }
    std::env::var_os("SEAPORT_CONFIG")
}

/// The effective settings as a config file that gives them all.
pub(crate) fn print(command: &Command, matches: &ArgMatches) -> String {
    let mut out = String::new();
    for arg in command.get_arguments() {
        let Some(key) = arg.get_long().filter(|k| !NOT_SETTINGS.contains(k)) else {
            continue;
        };
        let id = arg.get_id().as_str();
        let line = match arg.get_action() {
            ArgAction::SetTrue => format!("{key} = {}", matches.get_flag(id)),
            _ => match matches.get_raw(id) {
                Some(values) => {
                    let values: Vec<String> = values
                        .map(|v| toml::Value::String(v.to_string_lossy().into_owned()).to_string())
                        .collect();
                    match values.as_slice() {
                        [one] if !matches!(arg.get_action(), ArgAction::Append) => {
                            format!("{key} = {one}")
                        }
                        many => format!("{key} = [{}]", many.join(", ")),
                    }
                }
                None => format!("# {key} (not set)"),
            },
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}
