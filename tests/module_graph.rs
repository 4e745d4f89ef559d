//! No import circles between the files of `src/`.
//!
//! Why: every later capability of wsgate lands in this one module tree, and
//! the tree is meant to read as stages (see the layout in `src/lib.rs`): a
//! lower stage is used by the ones above it and knows nothing of them. An
//! import circle between files means a lower stage knows an upper one; after
//! that, no file of the circle can be understood, tested or moved on its own,
//! and each new feature is tempted to add one more strand to the knot. This
//! test keeps the graph honest: it reads every `.rs` file under `src/` (std
//! only, a plain text scan, no compiler), builds the graph of file-level
//! imports inside the crate, and fails when that graph has a circle.
//!
//! What counts as an import of file A by file B: a path in B's code (not in a
//! comment, a doc link or a string) that names something A defines: `use
//! crate::...`, `use super::...`, `use self::...`, grouped `use` trees, and
//! inline paths such as `crate::tunnel::pool::release_spares()` or
//! `$crate::...` in a macro. A path is resolved to the deepest file its
//! segments reach, then through `pub use` re-exports to the file that really
//! defines the name. Code under `#[cfg(test)]` is left out, and so is
//! `src/main.rs` (a separate binary crate). An import between a module file
//! and one of its own submodules' files is not counted: a parent and its child
//! module aside, every pair of files counts.
//!
//! How to read a failure: each circle is printed as the files of one strongly
//! connected component, then one shortest loop through them (one import per
//! hop), then every import inside the component as
//! `src/x.rs:LINE imports crate::path (-> src/y.rs)`. Break the circle by
//! moving the imported item down to the lower stage (or into a new file
//! below both), or by having the upper stage pass what the lower one needs
//! instead of the lower one reaching up for it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

// ---------------------------------------------------------------------------
// Lexing: blank out what is not code, then cut the rest into tokens.
// ---------------------------------------------------------------------------

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `source` with comments (`//`, `///`, `//!`, nested `/* */`), string
/// literals (plain, byte, raw `r#"..."#`) and char literals replaced by
/// spaces. Newlines are kept, so line numbers stay those of the file.
fn blank_non_code(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let end = if c == '/' && next == Some('/') {
            // Up to the end of the line; the newline itself is code.
            let mut j = i;
            while j < chars.len() && chars[j] != '\n' {
                j += 1;
            }
            j
        } else if c == '/' && next == Some('*') {
            block_comment_end(&chars, i)
        } else if c == '"' {
            string_end(&chars, i + 1)
        } else if let Some(end) = raw_string_end(&chars, i) {
            end
        } else if let Some(end) = (c == '\'').then(|| char_literal_end(&chars, i)).flatten() {
            end
        } else {
            out.push(c);
            i += 1;
            continue;
        };
        out.extend(chars[i..end].iter().map(|&c| if c == '\n' { '\n' } else { ' ' }));
        i = end;
    }
    out
}

/// End (exclusive) of the block comment opening at `start`; they nest.
fn block_comment_end(chars: &[char], start: usize) -> usize {
    let (mut j, mut depth) = (start + 2, 1);
    while j < chars.len() && depth > 0 {
        if chars[j] == '/' && chars.get(j + 1) == Some(&'*') {
            depth += 1;
            j += 2;
        } else if chars[j] == '*' && chars.get(j + 1) == Some(&'/') {
            depth -= 1;
            j += 2;
        } else {
            j += 1;
        }
    }
    j
}

/// End (exclusive) of a string whose contents start at `j`.
fn string_end(chars: &[char], mut j: usize) -> usize {
    while j < chars.len() {
        match chars[j] {
            '\\' => j += 2,
            '"' => return j + 1,
            _ => j += 1,
        }
    }
    chars.len()
}

/// If a raw string (`r"..."`, `r#"..."#`, `br#"..."#`) starts at `i` (its
/// `r`), its end (exclusive). `r#ident` (a raw identifier) is not one.
fn raw_string_end(chars: &[char], i: usize) -> Option<usize> {
    if chars[i] != 'r' {
        return None;
    }
    let starts_token = match i.checked_sub(1).map(|p| chars[p]) {
        None => true,
        Some('b' | 'c') => i < 2 || !is_ident_char(chars[i - 2]),
        Some(p) => !is_ident_char(p),
    };
    if !starts_token {
        return None;
    }
    let mut j = i + 1;
    let mut hashes = 0;
    while chars.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if chars.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < chars.len() {
        if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(chars.len())
}

/// If a char literal (`'x'`, `'\n'`, `'\u{1F600}'`, `'\''`) starts at `i`,
/// its end (exclusive). A lifetime or label (`'a`, `'static`) is not one:
/// its second character is not followed by a closing quote.
fn char_literal_end(chars: &[char], i: usize) -> Option<usize> {
    match chars.get(i + 1) {
        Some('\\') => {
            let mut j = i + 3;
            while j < chars.len() && chars[j] != '\'' && chars[j] != '\n' {
                j += 1;
            }
            Some(j + 1)
        }
        Some(&c) if c != '\'' && chars.get(i + 2) == Some(&'\'') => Some(i + 3),
        _ => None,
    }
}

#[derive(Clone, Debug)]
struct Token {
    text: String,
    line: usize,
}

impl Token {
    fn is(&self, text: &str) -> bool {
        self.text == text
    }

    /// An identifier or keyword (`$crate` and macro variables included).
    fn is_ident(&self) -> bool {
        self.text
            .starts_with(|c: char| c.is_alphabetic() || c == '_' || c == '$')
    }
}

/// Tokens of code already blanked: identifiers (`r#x` as `x`, `$crate` as one
/// token), `::`, `->`, `=>`, and any other character on its own.
fn tokenize(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_ident_char(c) || (c == '$' && chars.get(i + 1).is_some_and(|&n| is_ident_char(n))) {
            let start = i;
            i += 1;
            while i < chars.len() && is_ident_char(chars[i]) {
                i += 1;
            }
            let mut text: String = chars[start..i].iter().collect();
            if text == "r" && chars.get(i) == Some(&'#') && chars.get(i + 1).is_some_and(|&n| is_ident_char(n)) {
                let raw = i + 1;
                i = raw;
                while i < chars.len() && is_ident_char(chars[i]) {
                    i += 1;
                }
                text = chars[raw..i].iter().collect();
            }
            tokens.push(Token { text, line });
        } else {
            let pair: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let len = if matches!(pair.as_str(), "::" | "->" | "=>") {
                2
            } else {
                1
            };
            tokens.push(Token {
                text: chars[i..i + len].iter().collect(),
                line,
            });
            i += len;
        }
    }
    tokens
}

// ---------------------------------------------------------------------------
// Test-only code: `#[cfg(test)]` items are cut out of the token stream.
// ---------------------------------------------------------------------------

/// Index of the bracket closing the one opened at `open` (all of `([{`
/// counted together; the code compiles, so they are balanced).
fn matching_close(tokens: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (j, token) in tokens.iter().enumerate().skip(open) {
        match token.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Whether the attribute's contents (between `[` and `]`) are `cfg(test)` or
/// `cfg(all(..., test, ...))`: the item exists in test builds only.
fn is_cfg_test(contents: &[Token]) -> bool {
    let text: String = contents.iter().map(|t| t.text.as_str()).collect();
    text == "cfg(test)"
        || (text.starts_with("cfg(all(") && ["(test,", ",test,", ",test)"].iter().any(|p| text.contains(p)))
}

/// End (exclusive) of the item (or field, variant, match arm, statement)
/// starting at `start`: a `;` or `,` at its own level, a `{ ... }` block at its
/// own level, or the bracket closing the one it sits in. Brace matching is
/// enough here; `<>` are counted at the item's level so that the `,` of
/// `Result<A, B>` does not end a signature.
fn item_end(tokens: &[Token], start: usize) -> usize {
    let (mut depth, mut angle) = (0, 0);
    let mut j = start;
    while j < tokens.len() {
        match tokens[j].text.as_str() {
            "{" if depth == 0 => return matching_close(tokens, j) + 1,
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" if depth == 0 => return j,
            ")" | "]" | "}" => depth -= 1,
            "<" if depth == 0 => angle += 1,
            ">" if depth == 0 && angle > 0 => angle -= 1,
            ";" | "," if depth == 0 && angle == 0 => return j + 1,
            _ => {}
        }
        j += 1;
    }
    tokens.len()
}

/// The tokens without the items under `#[cfg(test)]`, or `None` when the file
/// itself is test-only (`#![cfg(test)]` at its top level).
fn strip_test_items(tokens: &[Token]) -> Option<Vec<Token>> {
    let mut kept = Vec::with_capacity(tokens.len());
    let (mut i, mut depth) = (0, 0);
    while i < tokens.len() {
        let inner = tokens.get(i + 1).is_some_and(|t| t.is("!"));
        let open = if inner { i + 2 } else { i + 1 };
        if tokens[i].is("#") && tokens.get(open).is_some_and(|t| t.is("[")) {
            let close = matching_close(tokens, open);
            if is_cfg_test(&tokens[open + 1..close.min(tokens.len())]) {
                if inner && depth == 0 {
                    return None;
                }
                // Skip the item's other attributes, then the item.
                let mut j = close + 1;
                while tokens.get(j).is_some_and(|t| t.is("#")) && tokens.get(j + 1).is_some_and(|t| t.is("[")) {
                    j = matching_close(tokens, j + 1) + 1;
                }
                i = item_end(tokens, j);
                continue;
            }
        }
        match tokens[i].text.as_str() {
            "{" => depth += 1,
            "}" => depth -= 1,
            _ => {}
        }
        kept.push(tokens[i].clone());
        i += 1;
    }
    Some(kept)
}

// ---------------------------------------------------------------------------
// Scanning one file: its `mod` declarations, `use` trees and inline paths.
// ---------------------------------------------------------------------------

/// One name a `use` tree brings in (or a glob, `binding: None`).
#[derive(Clone, Debug)]
struct UseEntry {
    /// The path as written, `self` in a group already folded into its prefix.
    segs: Vec<String>,
    binding: Option<String>,
    line: usize,
    /// `pub use`, `pub(crate) use` and so on: a re-export.
    is_pub: bool,
    /// Inline modules (`mod x { ... }`) the `use` sits in, inside the file.
    inline: Vec<String>,
}

/// A path in code outside `use`: `crate::a::f()`, `super::X`, `alias::Y`.
#[derive(Clone, Debug)]
struct PathRef {
    segs: Vec<String>,
    line: usize,
    inline: Vec<String>,
}

#[derive(Default, Debug)]
struct FileScan {
    /// `mod x;` declarations (outside test code), with their inline modules.
    mods: Vec<Vec<String>>,
    uses: Vec<UseEntry>,
    paths: Vec<PathRef>,
    /// Names of `#[macro_export] macro_rules!` macros (found at the crate root).
    macro_exports: Vec<String>,
}

/// Parses the `use` tree starting at `i`, under `prefix`; pushes its entries
/// and returns the index after the tree.
fn parse_use_tree(
    tokens: &[Token],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<(Vec<String>, Option<String>, usize)>,
) -> usize {
    let mut segs = prefix.to_vec();
    if tokens.get(i).is_some_and(|t| t.is("::")) {
        // `use ::name`: an external crate; a segment no resolution accepts.
        segs.push("::".to_owned());
        i += 1;
    }
    loop {
        let Some(token) = tokens.get(i) else { return i };
        match token.text.as_str() {
            "{" => {
                i += 1;
                while tokens.get(i).is_some_and(|t| !t.is("}")) {
                    i = parse_use_tree(tokens, i, &segs, out);
                    if tokens.get(i).is_some_and(|t| t.is(",")) {
                        i += 1;
                    }
                }
                return i + 1;
            }
            "*" => {
                out.push((segs, None, token.line));
                return i + 1;
            }
            _ if token.is_ident() => {
                // `self` inside a group names the group's prefix itself.
                let group_self = token.is("self") && !segs.is_empty();
                if !group_self {
                    segs.push(token.text.clone());
                }
                let line = token.line;
                i += 1;
                if tokens.get(i).is_some_and(|t| t.is("::")) {
                    i += 1;
                    continue;
                }
                let mut binding = segs.last().cloned();
                if tokens.get(i).is_some_and(|t| t.is("as")) {
                    binding = tokens.get(i + 1).map(|t| t.text.clone());
                    i += 2;
                }
                out.push((segs, binding.filter(|b| b != "_"), line));
                return i;
            }
            // Anything else ends a malformed tree; skip it.
            _ => return i + 1,
        }
    }
}

/// Whether the `use` at `i` is preceded by `pub` or `pub(...)`.
fn is_pub_use(tokens: &[Token], i: usize) -> bool {
    match i.checked_sub(1).map(|p| &tokens[p]) {
        Some(t) if t.is("pub") => true,
        Some(t) if t.is(")") => {
            let mut j = i - 1;
            while j > 0 && !tokens[j].is("(") {
                j -= 1;
            }
            j > 0 && tokens[j - 1].is("pub")
        }
        _ => false,
    }
}

/// Whether the `macro_rules!` at `i` carries `#[macro_export]`.
fn has_macro_export(tokens: &[Token], i: usize) -> bool {
    let mut j = i;
    // Walk back over the attributes just before it.
    while j >= 2 && tokens[j - 1].is("]") {
        let Some(open) = (0..j - 1).rev().find(|&k| tokens[k].is("[")) else {
            return false;
        };
        if tokens.get(open + 1).is_some_and(|t| t.is("macro_export")) {
            return true;
        }
        j = open.saturating_sub(1);
    }
    false
}

/// Scans a file's source: blank, tokenize, cut test code, collect. `None`
/// for a test-only file.
fn scan_file(source: &str) -> Option<FileScan> {
    let tokens = strip_test_items(&tokenize(&blank_non_code(source)))?;
    let mut scan = FileScan::default();
    // Inline modules open at this point, with the brace depth inside them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let inline_names = |inline: &[(String, usize)]| inline.iter().map(|m| m.0.clone()).collect::<Vec<_>>();
    let (mut i, mut depth) = (0, 0usize);
    while i < tokens.len() {
        let token = &tokens[i];
        let next = |k: usize| tokens.get(i + k);
        match token.text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|m| m.1 > depth) {
                    inline.pop();
                }
            }
            "mod" if next(1).is_some_and(Token::is_ident) && next(2).is_some_and(|t| t.is(";")) => {
                let mut module = inline_names(&inline);
                module.push(tokens[i + 1].text.clone());
                scan.mods.push(module);
                i += 3;
                continue;
            }
            "mod" if next(1).is_some_and(Token::is_ident) && next(2).is_some_and(|t| t.is("{")) => {
                inline.push((tokens[i + 1].text.clone(), depth + 1));
                i += 2;
                continue;
            }
            "macro_rules"
                if next(1).is_some_and(|t| t.is("!"))
                    && next(2).is_some_and(Token::is_ident)
                    && has_macro_export(&tokens, i) =>
            {
                scan.macro_exports.push(tokens[i + 2].text.clone());
            }
            "use" => {
                let is_pub = is_pub_use(&tokens, i);
                let mut entries = Vec::new();
                let end = parse_use_tree(&tokens, i + 1, &[], &mut entries);
                for (segs, binding, line) in entries {
                    scan.uses.push(UseEntry {
                        segs,
                        binding,
                        line,
                        is_pub,
                        inline: inline_names(&inline),
                    });
                }
                i = end;
                continue;
            }
            _ if token.is_ident() && next(1).is_some_and(|t| t.is("::")) && !(i > 0 && tokens[i - 1].is("::")) => {
                let mut segs = vec![token.text.clone()];
                let mut line = token.line;
                let mut j = i + 1;
                while tokens.get(j).is_some_and(|t| t.is("::")) && tokens.get(j + 1).is_some_and(Token::is_ident) {
                    segs.push(tokens[j + 1].text.clone());
                    line = tokens[j + 1].line;
                    j += 2;
                }
                scan.paths.push(PathRef {
                    segs,
                    line,
                    inline: inline_names(&inline),
                });
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Some(scan)
}

// ---------------------------------------------------------------------------
// The crate: files by module path, and resolution of paths to files.
// ---------------------------------------------------------------------------

/// The module a file under `src/` is: `src/a/b.rs` and `src/a/b/mod.rs` are
/// `crate::a::b` (`["a", "b"]`), `src/lib.rs` is `crate` (`[]`). `None` for
/// the binaries (`src/main.rs`, `src/bin/`), separate crates whose
/// `wsgate::` paths point at the library.
fn module_of(path: &str) -> Option<Vec<String>> {
    let rel = path.strip_prefix("src/")?.strip_suffix(".rs")?;
    if rel == "main" || rel.starts_with("bin/") {
        return None;
    }
    if rel == "lib" {
        return Some(Vec::new());
    }
    let mut module: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if module.last().is_some_and(|m| m == "mod") {
        module.pop();
    }
    Some(module)
}

/// One import of a file by another: where, and the path as written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Site {
    line: usize,
    written: String,
    /// The path from the crate root (`crate::...`), after `super`, `self` and
    /// `use` aliases.
    absolute: String,
}

struct Crate {
    /// The library's files (those `lib.rs` reaches by `mod` outside test
    /// code), by path.
    files: BTreeMap<String, FileInfo>,
    by_module: HashMap<Vec<String>, String>,
    /// `#[macro_export]` macros: at the crate root, defined in this file.
    macro_exports: HashMap<String, String>,
}

struct FileInfo {
    module: Vec<String>,
    scan: FileScan,
    /// Names `use` binds in this file (inline modules flattened into it).
    aliases: HashMap<String, UseEntry>,
    /// Names `pub use` re-exports at the file's top level.
    reexports: HashMap<String, UseEntry>,
}

/// Bound on alias and re-export chains (they cannot loop in code that
/// compiles, but a text scan should not trust that).
const CHAIN: u32 = 8;

impl Crate {
    /// Builds the crate from `path -> source` (paths like `src/a/b.rs`).
    fn new(sources: &BTreeMap<String, String>) -> Crate {
        let mut scanned: HashMap<Vec<String>, (String, FileScan)> = HashMap::new();
        for (path, source) in sources {
            if let (Some(module), Some(scan)) = (module_of(path), scan_file(source)) {
                scanned.insert(module, (path.clone(), scan));
            }
        }
        // Only the files `lib.rs` declares, directly or through other files:
        // a file declared under `#[cfg(test)]` is test code.
        let mut queue = VecDeque::from([Vec::new()]);
        let mut files = BTreeMap::new();
        let mut by_module = HashMap::new();
        while let Some(module) = queue.pop_front() {
            let Some((path, scan)) = scanned.remove(&module) else {
                continue;
            };
            for declared in &scan.mods {
                queue.push_back([module.clone(), declared.clone()].concat());
            }
            let named = |pub_only: bool| {
                scan.uses
                    .iter()
                    .filter(|u| !pub_only || (u.is_pub && u.inline.is_empty()))
                    .filter_map(|u| Some((u.binding.clone()?, u.clone())))
                    .collect::<HashMap<_, _>>()
            };
            let (aliases, reexports) = (named(false), named(true));
            by_module.insert(module.clone(), path.clone());
            files.insert(
                path,
                FileInfo {
                    module,
                    scan,
                    aliases,
                    reexports,
                },
            );
        }
        let macro_exports = files
            .iter()
            .flat_map(|(path, info)| info.scan.macro_exports.iter().map(|m| (m.clone(), path.clone())))
            .collect();
        Crate {
            files,
            by_module,
            macro_exports,
        }
    }

    /// `segs` as written in `file` inside module `here` (the file's module
    /// plus inline modules), made absolute (the segments after `crate`).
    /// `None` for paths out of the crate (std, dependencies) or to local
    /// items that are not modules.
    fn absolutize(&self, file: &FileInfo, here: &[String], segs: &[String], budget: u32) -> Option<Vec<String>> {
        let (first, rest) = segs.split_first()?;
        match first.as_str() {
            "crate" | "$crate" => Some(rest.to_vec()),
            "self" => Some([here, rest].concat()),
            "super" => {
                let mut module = here.to_vec();
                let supers = segs.iter().take_while(|s| *s == "super").count();
                for _ in 0..supers {
                    module.pop()?;
                }
                Some([&module[..], &segs[supers..]].concat())
            }
            _ => {
                // A child module declared here (2018 paths: `use child::X`).
                let child = [here, std::slice::from_ref(first)].concat();
                if self.by_module.contains_key(&child) {
                    return Some([here, segs].concat());
                }
                // A name a `use` of this file binds (`use crate::config;`
                // then `config::raw::X`).
                let alias = file.aliases.get(first)?;
                if budget == 0 || alias.segs == [first.clone()] {
                    return None;
                }
                let alias_here = [&file.module[..], &alias.inline[..]].concat();
                let base = self.absolutize(file, &alias_here, &alias.segs, budget - 1)?;
                Some([&base[..], rest].concat())
            }
        }
    }

    /// The file that defines what the absolute path `abs` names: the deepest
    /// module file its segments reach, then through that file's `pub use`
    /// of the next segment, if any, to where the re-export points.
    fn resolve(&self, abs: &[String], budget: u32) -> &str {
        let mut depth = 0;
        while depth < abs.len() && self.by_module.contains_key(&abs[..=depth]) {
            depth += 1;
        }
        let path = &self.by_module[&abs[..depth]];
        let Some(name) = abs.get(depth) else { return path };
        let info = &self.files[path];
        if let Some(reexport) = info.reexports.get(name).filter(|_| budget > 0) {
            // A re-export of a dependency's item or of one defined here
            // (`pub(crate) use my_macro;`) resolves to this file.
            if let Some(target) = self.absolutize(info, &info.module, &reexport.segs, CHAIN) {
                return self.resolve(&[&target[..], &abs[depth + 1..]].concat(), budget - 1);
            }
        } else if depth == 0 {
            if let Some(defining) = self.macro_exports.get(name) {
                return defining;
            }
        }
        path
    }

    /// Every import of one file by another inside the crate, as
    /// `from -> to -> sites`, self-imports and imports between a module file
    /// and its own descendants left out.
    fn imports(&self) -> BTreeMap<&str, BTreeMap<&str, BTreeSet<Site>>> {
        let mut graph: BTreeMap<&str, BTreeMap<&str, BTreeSet<Site>>> = BTreeMap::new();
        for (from, info) in &self.files {
            graph.entry(from.as_str()).or_default();
            let written = |segs: &[String]| segs.join("::");
            // `use` entries: every one names something.
            let uses = info.scan.uses.iter().map(|u| {
                let mut text = written(&u.segs);
                if u.binding.is_none() {
                    text.push_str("::*");
                }
                (&u.segs, &u.inline, u.line, text, None)
            });
            // Inline paths: a path through a `use` alias counts only when it
            // reaches past the alias's own target (`inspect::tunnel::X` after
            // `use crate::inspect;`), the `use` line already counts the rest.
            let paths = info.scan.paths.iter().map(|p| {
                let alias = info.aliases.get(&p.segs[0]);
                (&p.segs, &p.inline, p.line, written(&p.segs), alias)
            });
            for (segs, inline, line, text, alias) in uses.chain(paths) {
                let here = [&info.module[..], &inline[..]].concat();
                let Some(abs) = self.absolutize(info, &here, segs, CHAIN) else {
                    continue;
                };
                let to = self.resolve(&abs, CHAIN);
                if let Some(alias) = alias {
                    let alias_here = [&info.module[..], &alias.inline[..]].concat();
                    let alias_to = self
                        .absolutize(info, &alias_here, &alias.segs, CHAIN)
                        .map(|a| self.resolve(&a, CHAIN));
                    if alias_to == Some(to) {
                        continue;
                    }
                }
                let to_module = &self.files[to].module;
                if to == from || to_module.starts_with(&info.module) || info.module.starts_with(to_module) {
                    continue;
                }
                let site = Site {
                    line,
                    written: text,
                    absolute: format!("crate::{}", abs.join("::")),
                };
                graph
                    .entry(from.as_str())
                    .or_default()
                    .entry(to)
                    .or_default()
                    .insert(site);
            }
        }
        graph
    }
}

// ---------------------------------------------------------------------------
// Circles: strongly connected components (Tarjan) and a shortest loop.
// ---------------------------------------------------------------------------

type Graph<'a> = BTreeMap<&'a str, BTreeMap<&'a str, BTreeSet<Site>>>;

/// The strongly connected components of more than one file, each sorted, in
/// a stable order.
fn circles<'a>(graph: &Graph<'a>) -> Vec<Vec<&'a str>> {
    struct Tarjan<'g, 'a> {
        graph: &'g Graph<'a>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    impl<'a> Tarjan<'_, 'a> {
        fn visit(&mut self, node: &'a str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            self.on_stack.insert(node);
            for &next in self.graph.get(node).into_iter().flat_map(|e| e.keys()) {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(top) = self.stack.pop() {
                    self.on_stack.remove(top);
                    component.push(top);
                    if top == node {
                        break;
                    }
                }
                component.sort_unstable();
                self.components.push(component);
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for &node in graph.keys() {
        if !tarjan.index.contains_key(node) {
            tarjan.visit(node);
        }
    }
    let mut found: Vec<_> = tarjan.components.into_iter().filter(|c| c.len() > 1).collect();
    found.sort_by_key(|c| (std::cmp::Reverse(c.len()), c[0]));
    found
}

/// One shortest loop through the component: its files in order, the first
/// repeated at the end (breadth-first search from each file).
fn shortest_loop<'a>(graph: &Graph<'a>, component: &[&'a str]) -> Vec<&'a str> {
    let inside: BTreeSet<&str> = component.iter().copied().collect();
    let mut best: Vec<&str> = Vec::new();
    for &start in component {
        let mut came_from: HashMap<&str, &str> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        'search: while let Some(node) = queue.pop_front() {
            for &next in graph[node].keys().filter(|n| inside.contains(*n)) {
                if next == start {
                    let mut path = vec![start, node];
                    let mut at = node;
                    while at != start {
                        at = came_from[at];
                        path.push(at);
                    }
                    path.reverse();
                    if best.is_empty() || path.len() < best.len() {
                        best = path;
                    }
                    break 'search;
                }
                if next != start && !came_from.contains_key(next) {
                    came_from.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
    }
    best
}

fn describe(from: &str, to: &str, site: &Site) -> String {
    let mut line = format!("{from}:{} imports {}", site.line, site.written);
    if site.written != site.absolute {
        let _ = write!(line, " = {}", site.absolute);
    }
    let _ = write!(line, " (-> {to})");
    line
}

/// The failure message: each circle's files, a shortest loop, every import
/// inside it.
fn report(graph: &Graph, found: &[Vec<&str>]) -> String {
    let mut out = format!(
        "{} import circle(s) between files of src/ (a lower stage imports an upper one; \
         a parent and its child module aside):\n",
        found.len()
    );
    for (n, component) in found.iter().enumerate() {
        let inside: BTreeSet<&str> = component.iter().copied().collect();
        let _ = writeln!(out, "\ncircle {} ({} files):", n + 1, component.len());
        for file in component {
            let _ = writeln!(out, "  {file}");
        }
        let _ = writeln!(out, "  one shortest loop (first import of each hop):");
        for hop in shortest_loop(graph, component).windows(2) {
            let site = graph[hop[0]][hop[1]].iter().next().expect("an edge has a site");
            let _ = writeln!(out, "    {}", describe(hop[0], hop[1], site));
        }
        let _ = writeln!(out, "  every import inside the circle:");
        let mut inner: Vec<(&str, &Site, &str)> = component
            .iter()
            .flat_map(|&from| graph[from].iter().map(move |(&to, sites)| (from, to, sites)))
            .filter(|(_, to, _)| inside.contains(to))
            .flat_map(|(from, to, sites)| sites.iter().map(move |site| (from, site, to)))
            .collect();
        inner.sort();
        for (from, site, to) in inner {
            let _ = writeln!(out, "    {}", describe(from, to, site));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The check on the real tree.
// ---------------------------------------------------------------------------

/// Every `.rs` file under `dir`, keyed by its path relative to `root` with
/// `/` separators (`src/a/b.rs`).
fn read_sources(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            read_sources(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under the root");
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let source = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            out.insert(key, source);
        }
    }
}

#[test]
fn no_import_circles_between_files() {
    let started = Instant::now();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = BTreeMap::new();
    read_sources(root, &root.join("src"), &mut sources);
    let krate = Crate::new(&sources);
    let graph = krate.imports();
    let found = circles(&graph);
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    eprintln!(
        "module graph: {} library files, {edges} file-to-file imports, {} circle(s), in {:?}",
        krate.files.len(),
        found.len(),
        started.elapsed()
    );
    assert!(krate.files.len() > 10, "src/lib.rs should reach the crate's files");
    assert!(found.is_empty(), "{}", report(&graph, &found));
}

// ---------------------------------------------------------------------------
// The parser and the cycle search on small in-memory trees.
// ---------------------------------------------------------------------------

fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect()
}

/// The imports as `(from, line, to)`, sorted.
fn edges_of(sources: &BTreeMap<String, String>) -> Vec<(String, usize, String)> {
    let krate = Crate::new(sources);
    let mut edges = Vec::new();
    for (from, targets) in krate.imports() {
        for (to, sites) in targets {
            edges.extend(sites.iter().map(|s| (from.to_owned(), s.line, to.to_owned())));
        }
    }
    edges.sort();
    edges
}

fn edge(from: &str, line: usize, to: &str) -> (String, usize, String) {
    (from.to_owned(), line, to.to_owned())
}

fn circles_of(sources: &BTreeMap<String, String>) -> Vec<Vec<String>> {
    let krate = Crate::new(sources);
    let graph = krate.imports();
    circles(&graph)
        .iter()
        .map(|c| c.iter().map(|f| f.to_string()).collect())
        .collect()
}

#[test]
fn grouped_use_across_lines_resolves_each_leaf() {
    let sources = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        (
            "src/a.rs",
            "pub(crate) use crate::{\n    b::X,\n    c::{d::Y, Z as W, self},\n};\n",
        ),
        ("src/b.rs", "pub struct X;\n"),
        ("src/c/mod.rs", "pub mod d;\npub struct Z;\n"),
        ("src/c/d.rs", "pub struct Y;\n"),
    ]);
    assert_eq!(
        edges_of(&sources),
        [
            edge("src/a.rs", 2, "src/b.rs"),
            edge("src/a.rs", 3, "src/c/d.rs"),
            // `Z as W` and `self`: two imports of c/mod.rs on line 3.
            edge("src/a.rs", 3, "src/c/mod.rs"),
            edge("src/a.rs", 3, "src/c/mod.rs"),
        ]
    );
}

#[test]
fn comments_doc_links_strings_and_chars_are_not_imports() {
    let a = r##"//! Module docs naming [`crate::b::X`].
/// See [`crate::b`] and crate::b::X.
/* a block /* nested */ crate::b::X */
pub fn f<'a>(s: &'a str) -> &'a str {
    let _ = "crate::b::X \" crate::b::X";
    let _ = r#"crate::b::X " crate::b::X"#;
    let _ = br"crate::b::X";
    let _ = ('"', '\'', b'x', '\u{1F600}');
    let _: crate::c::Y; // a lifetime or a quote char must not hide this
    s
}
"##;
    let sources = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("src/a.rs", a),
        ("src/b.rs", "pub struct X;\n"),
        ("src/c.rs", "pub struct Y;\n"),
    ]);
    assert_eq!(edges_of(&sources), [edge("src/a.rs", 9, "src/c.rs")]);
}

#[test]
fn test_only_code_is_skipped() {
    let a = "pub fn f() {}\n\
             #[cfg(test)]\n\
             mod tests {\n    use crate::b::X;\n    fn g() -> Result<(), crate::b::X> { todo!() }\n}\n\
             #[cfg(test)]\n\
             mod helpers;\n\
             pub fn h() -> crate::c::Y { crate::c::Y }\n";
    let sources = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("src/a.rs", a),
        ("src/a/helpers.rs", "use crate::b::X;\n"),
        ("src/b.rs", "pub struct X;\n"),
        ("src/c.rs", "pub struct Y;\n"),
    ]);
    // Line 9 names crate::c::Y twice: one site.
    assert_eq!(edges_of(&sources), [edge("src/a.rs", 9, "src/c.rs")]);
}

#[test]
fn super_and_self_are_relative_to_the_module() {
    let sources = tree(&[
        ("src/lib.rs", "mod m;\nmod top;\n"),
        ("src/m/mod.rs", "mod x;\nmod y;\nmod deep;\n"),
        ("src/m/x.rs", "use super::y::Z;\nfn f() { super::super::top::g(); }\n"),
        ("src/m/y.rs", "pub struct Z;\n"),
        ("src/m/deep/mod.rs", "mod leaf;\nuse self::leaf::L;\nuse super::x;\n"),
        ("src/m/deep/leaf.rs", "pub struct L;\n"),
        ("src/top.rs", "pub fn g() {}\n"),
    ]);
    assert_eq!(
        edges_of(&sources),
        [
            // `self::leaf` is the file's own child: not counted.
            edge("src/m/deep/mod.rs", 3, "src/m/x.rs"),
            edge("src/m/x.rs", 1, "src/m/y.rs"),
            edge("src/m/x.rs", 2, "src/top.rs"),
        ]
    );
}

#[test]
fn re_exports_lead_to_the_defining_file() {
    let sources = tree(&[
        ("src/lib.rs", "pub mod t;\npub mod u;\npub mod v;\npub mod w;\n"),
        (
            "src/t/mod.rs",
            "pub mod inner;\npub mod other;\npub use inner::Thing;\npub use self::other::{Other as Renamed};\n",
        ),
        ("src/t/inner.rs", "pub struct Thing;\n"),
        ("src/t/other.rs", "pub struct Other;\n"),
        (
            "src/u.rs",
            "use crate::t::Thing;\nfn f() -> crate::t::Renamed { todo!() }\n",
        ),
        // A re-export of a re-export, through the crate root path.
        ("src/v.rs", "pub use crate::t::Thing as Again;\n"),
        (
            "src/w.rs",
            "use crate::v::Again;\nuse crate::v;\nfn f(_: v::Again) {}\n",
        ),
    ]);
    assert_eq!(
        edges_of(&sources),
        [
            edge("src/u.rs", 1, "src/t/inner.rs"),
            edge("src/u.rs", 2, "src/t/other.rs"),
            edge("src/v.rs", 1, "src/t/inner.rs"),
            // `v::Again` reaches past `use crate::v;` into t/inner.rs.
            edge("src/w.rs", 1, "src/t/inner.rs"),
            edge("src/w.rs", 2, "src/v.rs"),
            edge("src/w.rs", 3, "src/t/inner.rs"),
        ]
    );
}

#[test]
fn macro_crate_paths_count() {
    let sources = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        (
            "src/a.rs",
            "#[macro_export]\nmacro_rules! m {\n    () => { $crate::b::X };\n}\n",
        ),
        ("src/b.rs", "pub struct X;\n"),
        ("src/c.rs", "fn f() { crate::m!(); }\n"),
    ]);
    assert_eq!(
        edges_of(&sources),
        [edge("src/a.rs", 3, "src/b.rs"), edge("src/c.rs", 1, "src/a.rs")]
    );
}

#[test]
fn circles_of_two_and_three_files_are_found() {
    let sources = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\nmod d;\nmod e;\nmod p;\n"),
        // a <-> b
        ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
        ("src/b.rs", "use crate::a::A;\npub struct B;\n"),
        // c -> d -> e -> c
        ("src/c.rs", "pub fn c() { crate::d::d() }\n"),
        ("src/d.rs", "pub fn d() { crate::e::e() }\n"),
        ("src/e.rs", "pub fn e() { crate::c::c() }\n"),
        // A parent and its child importing each other is no circle.
        ("src/p/mod.rs", "mod kid;\nuse kid::K;\npub struct P;\n"),
        ("src/p/kid.rs", "use super::P;\npub struct K;\n"),
    ]);
    assert_eq!(
        circles_of(&sources),
        [vec!["src/c.rs", "src/d.rs", "src/e.rs"], vec!["src/a.rs", "src/b.rs"]]
    );
    let krate = Crate::new(&sources);
    let graph = krate.imports();
    let found = circles(&graph);
    assert_eq!(
        shortest_loop(&graph, &found[0]),
        ["src/c.rs", "src/d.rs", "src/e.rs", "src/c.rs"]
    );
    let text = report(&graph, &found);
    assert!(text.contains("src/a.rs:1 imports crate::b::B (-> src/b.rs)"), "{text}");
    assert!(text.contains("src/e.rs:1 imports crate::c::c (-> src/c.rs)"), "{text}");
}

#[test]
fn an_acyclic_tree_has_no_circle() {
    let sources = tree(&[
        ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
        ("src/a.rs", "use crate::b::B;\nuse crate::c::C;\n"),
        ("src/b.rs", "use crate::c::C;\npub struct B;\n"),
        ("src/c.rs", "pub struct C;\n/// [`crate::a`]\nfn f() {}\n"),
        // Not declared by lib.rs (like main.rs): not part of the graph.
        ("src/main.rs", "use wsgate::a;\nfn main() {}\n"),
    ]);
    assert!(circles_of(&sources).is_empty());
    assert_eq!(edges_of(&sources).len(), 3);
}
