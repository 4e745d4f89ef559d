//! Shell completions and man pages, made from the command line's own
//! definition (`wsgate generate`, a hidden subcommand).
//!
//! Made by the binary itself rather than by a build script: the clap
//! definitions stay in one place (`src/main.rs`), nothing is compiled twice
//! for the build host, and the pages describe exactly the binary that
//! writes them. The Debian package runs it once on the binary it ships
//! (`packaging/build-deb.sh`); a from-source install can run it the same way.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The shells completions are written for, and each one's file name.
const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "wsgate.bash"),
    (Shell::Zsh, "_wsgate"),
    (Shell::Fish, "wsgate.fish"),
];

/// Writes `<dir>/completions/{wsgate.bash,_wsgate,wsgate.fish}` and, in
/// `<dir>/man/`, `wsgate.1` with one page per visible subcommand
/// (`wsgate-check.1`, …); returns the paths written.
pub fn write(command: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    for (shell, file) in COMPLETIONS {
        let path = completions.join(file);
        let mut out = fs::File::create(&path)?;
        clap_complete::generate(shell, &mut command.clone(), "wsgate", &mut out);
        written.push(path);
    }
    let man = dir.join("man");
    fs::create_dir_all(&man)?;
    // wsgate.1, and wsgate-check.1 and so on for the visible subcommands.
    clap_mangen::generate_to(command, &man)?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<io::Result<_>>()?;
    pages.sort();
    written.extend(pages);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command line shaped like wsgate's: a global option, a visible and
    /// a hidden subcommand.
    fn command() -> clap::Command {
        clap::Command::new("wsgate")
            .about("A proxy")
            .arg(clap::Arg::new("config").long("config").global(true))
            .subcommand(clap::Command::new("check").about("Check the configuration"))
            .subcommand(clap::Command::new("generate").hide(true))
    }

    #[test]
    fn completions_and_a_page_per_visible_subcommand() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write(command(), dir.path()).expect("write");
        let names: Vec<String> = written
            .iter()
            .map(|p| p.strip_prefix(dir.path()).expect("under dir").display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "completions/wsgate.bash",
                "completions/_wsgate",
                "completions/wsgate.fish",
                "man/wsgate-check.1",
                "man/wsgate.1"
            ]
        );
        let bash = fs::read_to_string(dir.path().join("completions/wsgate.bash")).expect("read");
        assert!(bash.contains("--config"), "{bash}");
        let page = fs::read_to_string(dir.path().join("man/wsgate-check.1")).expect("read");
        assert!(
            page.contains("wsgate\\-check") && page.contains("Check the configuration"),
            "{page}"
        );
    }
}
