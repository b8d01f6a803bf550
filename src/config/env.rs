//! The environment a configuration is resolved against: `${NAME}`
//! references in any string, and the `REPLAYGUARD_*` variables.

use super::ConfigError;

/// Prefix of the environment variables that set librdkafka properties for
/// every client: `REPLAYGUARD_KAFKA_SASL_PASSWORD` is `sasl.password`.
pub const KAFKA_ENV_PREFIX: &str = "REPLAYGUARD_KAFKA_";

/// The environment a configuration is resolved against (the process's, or a
/// given one in tests).
#[derive(Debug, Clone, Default)]
pub struct Env(std::collections::BTreeMap<String, String>);

impl Env {
    /// The process environment (variables that are not Unicode are left out).
    pub fn process() -> Env {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Env {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    pub fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.0
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (&k[prefix.len()..], v.as_str()))
    }
}

/// Resolves `${NAME}` in every string of a config value (`$${` is a literal
/// `${`). An unset variable is an error naming it and where it was used.
pub(super) fn interpolate(v: &mut toml::Value, at: &str, env: &Env) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) if s.contains("${") => *s = substitute(s, at, env)?,
        toml::Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                interpolate(x, &format!("{at}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, x) in t.iter_mut() {
                interpolate(x, &format!("{at}.{k}"), env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn substitute(s: &str, at: &str, env: &Env) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            // `$${` stands for a literal `${`
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after.find('}').ok_or_else(|| {
            ConfigError::Invalid(format!("{at}: an unclosed ${{ in an environment reference"))
        })?;
        let name = &after[..end];
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(ConfigError::Invalid(format!(
                "{at}: `${{{name}}}` is not an environment variable reference (names are \
                 letters, digits and underscores)"
            )));
        }
        let value = env.var(name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "{at} refers to the environment variable {name}, which is not set"
            ))
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
