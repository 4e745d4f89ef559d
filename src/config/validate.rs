use std::path::Path;
use super::{Config, ConfigErrors, ConfigError};
pub(super) fn parse(_text: &str, path: &Path) -> Result<Config, ConfigErrors> {
    Err(ConfigErrors::single(ConfigError::file(path, "todo")))
}
