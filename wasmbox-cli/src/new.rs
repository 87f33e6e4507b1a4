//! `wasmbox-cli new`: creates a guest crate that builds and runs at once, from the templates in
//! `wasmbox-cli/templates/`.

use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::{Path, PathBuf};

/// Create a guest crate NAME that builds and runs at once: `wasmbox-cli run NAME`.
///
/// The crate is a counter (`up` and `down` change it, it replies `value=N`) written as an async
/// function with `#[wasmbox]`, or with --sync as a type implementing `WasmBox`. It holds
/// Cargo.toml (a `cdylib` with a workspace of its own and a size-optimised release profile),
/// src/lib.rs, .gitignore and README.md. NAME must not exist yet, not even as an empty
/// directory; its last component is the package name.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The directory to create; its last component is the package name (ASCII letters, digits,
    /// `-` and `_`, starting with a letter).
    #[arg(value_name = "NAME")]
    path: PathBuf,

    /// Write the guest as a type implementing `WasmBox` (`#[wasmbox_sync]`) rather than as an
    /// async function (`#[wasmbox]`).
    #[arg(long)]
    sync: bool,

    /// Depend on a local checkout of WasmBox instead of the published `wasmbox` crate: DIR is
    /// the repository root or its `wasmbox/` crate directory (written as an absolute path).
    #[arg(long, value_name = "DIR")]
    wasmbox_path: Option<PathBuf>,
}

// The templates: real files under wasmbox-cli/templates/. Cargo.toml and README.md have
// `{{placeholders}}` that `fill` substitutes; the rest are written as they are.
const CARGO_TOML: &str = include_str!("../templates/Cargo.toml.tmpl");
const LIB_ASYNC: &str = include_str!("../templates/lib-async.rs");
const LIB_SYNC: &str = include_str!("../templates/lib-sync.rs");
const GITIGNORE: &str = include_str!("../templates/gitignore.tmpl");
const README: &str = include_str!("../templates/README.md.tmpl");

/// Rust keywords, strict and reserved, of every edition: the library's crate name (the
/// package name with `-` as `_`) cannot be one.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// The crates that come with Rust, whose names a package should not take.
const BUILT_IN: &[&str] = &["alloc", "core", "proc_macro", "std", "test"];

/// The guest's dependencies: a crate cannot depend on a crate of its own name.
const DEPENDENCIES: &[&str] = &["wasmbox", "serde"];

/// `wasmbox-cli new`.
///
/// # Errors
/// If NAME is not a valid package name, the path exists, `--wasmbox-path` is not a WasmBox
/// checkout, or a file cannot be written. Nothing is written when NAME is refused, and the new
/// directory is removed again if writing into it fails.
pub fn run(args: &NewArgs) -> Result<()> {
    let name = package_name(&args.path)?;
    let dependency = match &args.wasmbox_path {
        Some(dir) => {
            let crate_dir = wasmbox_crate_dir(dir)?;
            let path = crate_dir.to_str().with_context(|| {
                format!(
                    "{} is not valid UTF-8, so cannot be written into Cargo.toml",
                    crate_dir.display()
                )
            })?;
            format!("wasmbox = {{ path = {} }}", toml::Value::from(path))
        }
        None => format!("wasmbox = \"{}\"", published_version()),
    };
    // `symlink_metadata` so that a dangling symlink counts as existing, too.
    if args.path.symlink_metadata().is_ok() {
        bail!(
            "{} already exists: `new` creates a new directory and never writes into an existing one",
            args.path.display()
        );
    }
    let (lib, description) = if args.sync {
        (
            LIB_SYNC,
            "a counter written as a type implementing `WasmBox` (`#[wasmbox_sync]`)",
        )
    } else {
        (
            LIB_ASYNC,
            "a counter written as an async function (`#[wasmbox]`)",
        )
    };
    let lib_name = name.replace('-', "_");
    let values = [
        ("name", name),
        ("lib_name", lib_name.as_str()),
        ("wasmbox_dependency", dependency.as_str()),
        ("description", description),
        ("repository", env!("CARGO_PKG_REPOSITORY")),
    ];
    let files = [
        ("Cargo.toml", fill(CARGO_TOML, &values)),
        ("src/lib.rs", lib.to_owned()),
        (".gitignore", GITIGNORE.to_owned()),
        ("README.md", fill(README, &values)),
    ];

    if let Some(parent) = args.path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    // `create_dir` fails if the path appeared meanwhile: an existing directory is never used.
    std::fs::create_dir(&args.path)
        .with_context(|| format!("cannot create {}", args.path.display()))?;
    if let Err(e) = write_files(&args.path, &files) {
        // Only what this command created: the directory did not exist before.
        let _ = std::fs::remove_dir_all(&args.path);
        return Err(e);
    }

    let kind = if args.sync { "sync" } else { "async" };
    let names: Vec<&str> = files.iter().map(|(file, _)| *file).collect();
    eprintln!(
        "wasmbox-cli: created the guest crate `{name}` ({kind} counter) in {}: {}",
        args.path.display(),
        names.join(", ")
    );
    eprintln!(
        "wasmbox-cli: run it with `wasmbox-cli run {}`",
        args.path.display()
    );
    Ok(())
}

/// The package name: the last component of `path`, checked as cargo would.
fn package_name(path: &Path) -> Result<&str> {
    let Some(name) = path.file_name() else {
        bail!(
            "{} does not end in a name for the new crate",
            path.display()
        );
    };
    let Some(name) = name.to_str() else {
        bail!(
            "{} is not a valid package name: it is not UTF-8",
            path.display()
        );
    };
    check_package_name(name)?;
    Ok(name)
}

/// Checks that `name` is a package name cargo accepts and crates.io would: ASCII letters,
/// digits, `-` and `_`, starting with a letter, and not a reserved name.
fn check_package_name(name: &str) -> Result<()> {
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        bail!(
            "`{name}` is not a valid package name: {bad:?} is not allowed (use ASCII letters, digits, `-` and `_`)"
        );
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!("`{name}` is not a valid package name: it must start with an ASCII letter");
    }
    let crate_name = name.replace('-', "_");
    let reserved = |names: &[&str]| names.contains(&crate_name.as_str());
    if reserved(KEYWORDS) {
        bail!("`{name}` is not a valid package name: it is a Rust keyword");
    }
    if reserved(BUILT_IN) {
        bail!(
            "`{name}` is not a valid package name: it is the name of a crate that comes with Rust"
        );
    }
    if reserved(DEPENDENCIES) {
        bail!("`{name}` cannot be a guest's name: the guest depends on a crate of that name");
    }
    Ok(())
}

/// The version requirement on the published `wasmbox` crate that matches this CLI:
/// `MAJOR.MINOR` (e.g. `0.1`).
fn published_version() -> String {
    format!(
        "{}.{}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    )
}

/// The absolute path of the `wasmbox` crate in `dir`, which is either that crate's directory
/// or a checkout of the WasmBox repository holding it in `wasmbox/`.
fn wasmbox_crate_dir(dir: &Path) -> Result<PathBuf> {
    let dir = std::fs::canonicalize(dir)
        .with_context(|| format!("--wasmbox-path: cannot open {}", dir.display()))?;
    for candidate in [dir.clone(), dir.join("wasmbox")] {
        if manifest_package_name(&candidate.join("Cargo.toml")).as_deref() == Some("wasmbox") {
            return Ok(candidate);
        }
    }
    bail!(
        "--wasmbox-path: {} is neither the `wasmbox` crate's directory nor a WasmBox checkout with it in wasmbox/",
        dir.display()
    )
}

/// The `package.name` in the manifest at `path`, if it can be read.
fn manifest_package_name(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let manifest: toml::Table = text.parse().ok()?;
    Some(manifest.get("package")?.get("name")?.as_str()?.to_owned())
}

/// `template` with every `{{key}}` replaced by its value.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(template.to_owned(), |text, (key, value)| {
            text.replace(&format!("{{{{{key}}}}}"), value)
        })
}

/// Writes `files` (paths relative to `dir`) into `dir`, creating subdirectories.
fn write_files(dir: &Path, files: &[(&str, String)]) -> Result<()> {
    for (file, content) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, content)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_valid_names() -> Result<()> {
        for name in ["counter", "my-guest", "my_guest2", "A"] {
            check_package_name(name)?;
        }
        assert_eq!(package_name(Path::new("some/dir/my-guest"))?, "my-guest");
        Ok(())
    }

    #[test]
    fn reject_invalid_names() -> Result<()> {
        for name in [
            "", "2fast", "-x", "_x", "my guest", "café", "a.b", "fn", "test", "wasmbox",
        ] {
            anyhow::ensure!(check_package_name(name).is_err(), "{name:?} was accepted");
        }
        anyhow::ensure!(package_name(Path::new("..")).is_err());
        anyhow::ensure!(package_name(Path::new("/")).is_err());
        Ok(())
    }

    #[test]
    fn accept_templates_filled_completely() -> Result<()> {
        let values = [
            ("name", "x"),
            ("lib_name", "x"),
            ("wasmbox_dependency", "wasmbox = \"0.1\""),
            ("description", "d"),
            ("repository", "r"),
        ];
        for template in [CARGO_TOML, README] {
            let text = fill(template, &values);
            anyhow::ensure!(!text.contains("{{"), "left unfilled:\n{text}");
        }
        let manifest: toml::Table = fill(CARGO_TOML, &values).parse()?;
        assert_eq!(
            manifest["lib"]["crate-type"].as_array().map(Vec::len),
            Some(1)
        );
        anyhow::ensure!(
            manifest["workspace"]
                .as_table()
                .is_some_and(|t| t.is_empty())
        );
        Ok(())
    }

    #[test]
    fn accept_paths_quoted_for_toml() -> Result<()> {
        let line = format!(
            "wasmbox = {{ path = {} }}",
            toml::Value::from(r#"/a "b"\c"#)
        );
        let parsed: toml::Table = line.parse()?;
        assert_eq!(parsed["wasmbox"]["path"].as_str(), Some(r#"/a "b"\c"#));
        Ok(())
    }

    #[test]
    fn accept_a_checkout_or_its_crate_directory() -> Result<()> {
        let root = crate::guests::workspace();
        let expected = std::fs::canonicalize(root.join("wasmbox"))?;
        assert_eq!(wasmbox_crate_dir(&root)?, expected);
        assert_eq!(wasmbox_crate_dir(&root.join("wasmbox"))?, expected);
        anyhow::ensure!(wasmbox_crate_dir(&root.join("wasmbox-cli")).is_err());
        Ok(())
    }
}
