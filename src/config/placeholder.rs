//! Values left as the packaged template's placeholders.
//!
//! The Debian package installs `/etc/wsgate/wsgate.toml` with
//! [`PLACEHOLDER`] where only the operator knows the answer (the origin of
//! their web pages, their backend's address). Such a value is well-formed
//! (`https://CHANGE-ME.example.com` is a valid origin), so without this
//! check the template would load and send traffic nowhere useful; the
//! package's `postinst` looks for the same word to decide not to start the
//! service.

use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::ConfigError;

/// The word every placeholder of the packaged template contains.
pub const PLACEHOLDER: &str = "CHANGE-ME";

/// Every string value of `text` that still holds [`PLACEHOLDER`], with
/// its key; nothing when the text is not TOML (the parser reports that).
pub(super) fn unfilled(text: &str, path: &Path) -> Vec<ConfigError> {
    let Ok(root) = DeTable::parse(text) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    walk_table(root.get_ref(), "", &mut |key, value| {
        found.push(ConfigError::at(
            path,
            text,
            value.span().start,
            key,
            format!(
                "{PLACEHOLDER} is a placeholder of the packaged template: put in your own value (the comment \
                 above it says what goes there)"
            ),
        ));
    });
    found
}

fn walk_table(table: &DeTable<'_>, prefix: &str, found: &mut impl FnMut(String, &Spanned<DeValue<'_>>)) {
    for (key, value) in table {
        let key = if prefix.is_empty() {
            key.get_ref().to_string()
        } else {
            format!("{prefix}.{}", key.get_ref())
        };
        walk_value(value, key, found);
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, key: String, found: &mut impl FnMut(String, &Spanned<DeValue<'_>>)) {
    match value.get_ref() {
        DeValue::String(text) if text.contains(PLACEHOLDER) => found(key, value),
        DeValue::Table(table) => walk_table(table, &key, found),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, format!("{key}[{i}]"), found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_placeholder_is_named_with_its_key_and_place() {
        let text = "# CHANGE-ME in a comment is not a value\n[[route]]\nname = \"web\"\nallowed_origins = \
                    [\"https://ok.example\", \"https://CHANGE-ME.example.com\"]\n\n[[upstream]]\nservers = [{ \
                    address = \"CHANGE-ME:8080\" }]\n";
        let found = unfilled(text, Path::new("wsgate.toml"));
        let said: Vec<String> = found
            .iter()
            .map(|e| format!("{}:{}:{}", e.line, e.column, e.key))
            .collect();
        assert_eq!(
            said,
            [
                "4:42:route[0].allowed_origins[1]",
                "7:24:upstream[0].servers[0].address"
            ]
        );
        assert!(
            found[0].to_string().contains("CHANGE-ME is a placeholder"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_filled_in_file_has_none() {
        let text = "[[route]]\nallowed_origins = [\"https://app.example.com\"]\n";
        assert!(unfilled(text, Path::new("wsgate.toml")).is_empty());
    }
}
