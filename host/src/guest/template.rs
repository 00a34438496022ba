//! `pgws guest new`: a ready guest project in Rust, JavaScript, Python or C — the WIT, a guest that
//! forwards, a build script and a cases file — from templates compiled into the binary, so the
//! project matches the server that made it. It does not build the project (its `build.sh` does) or
//! run cases (`cases`).

use std::path::{Path, PathBuf};

/// The languages a project can be made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    Js,
    Python,
    C,
}

impl Language {
    fn describe(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::Js => "JavaScript",
            Language::Python => "Python",
            Language::C => "C",
        }
    }
}

/// One file of a project: its path inside the project and its text.
#[derive(Debug)]
pub struct ProjectFile {
    pub path: &'static str,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "{0:?} is not a project name: use 1-64 of a-z 0-9 _ -, starting with a letter \
         (it names the package and the .wasm file)"
    )]
    BadName(String),
    #[error("{} already exists and is not empty; pick another name or --dir", .0.display())]
    NotEmpty(PathBuf),
    #[error("writing {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

const WIT: &str = include_str!("../../../wit/pgws.wit");
const CASES: &str = include_str!("templates/cases.json");
const README: &str = include_str!("templates/README.md");

/// The language's own files: (path in the project, template).
fn sources(language: Language) -> &'static [(&'static str, &'static str)] {
    match language {
        Language::Rust => &[
            ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("templates/rust/lib.rs")),
            ("build.sh", include_str!("templates/rust/build.sh")),
        ],
        Language::Js => &[
            ("package.json", include_str!("templates/js/package.json")),
            ("guest.js", include_str!("templates/js/guest.js")),
            ("build.sh", include_str!("templates/js/build.sh")),
        ],
        Language::Python => &[
            ("guest.py", include_str!("templates/python/guest.py")),
            ("build.sh", include_str!("templates/python/build.sh")),
        ],
        Language::C => &[
            ("guest.c", include_str!("templates/c/guest.c")),
            ("build.sh", include_str!("templates/c/build.sh")),
        ],
    }
}

/// Whether `name` can name a package in every language and the `.wasm` file.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The files of a new project called `name`.
pub fn render(name: &str, language: Language) -> Result<Vec<ProjectFile>, TemplateError> {
    if !valid_name(name) {
        return Err(TemplateError::BadName(name.to_owned()));
    }
    let source = sources(language)
        .iter()
        .find(|(path, _)| *path != "build.sh" && !path.ends_with(".json") && *path != "Cargo.toml")
        .map_or("", |(path, _)| *path);
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            // Rust and C name their outputs with identifiers, where `-` is not allowed.
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{language}}", language.describe())
            .replace("{{source}}", source)
    };
    let mut files: Vec<ProjectFile> = sources(language)
        .iter()
        .map(|(path, template)| ProjectFile {
            path,
            text: fill(template),
        })
        .collect();
    files.push(ProjectFile {
        path: "wit/pgws.wit",
        text: WIT.to_owned(),
    });
    files.push(ProjectFile {
        path: "cases.json",
        text: fill(CASES),
    });
    files.push(ProjectFile {
        path: "README.md",
        text: fill(README),
    });
    Ok(files)
}

/// Writes `files` into `dir`, which must not exist or be empty; `build.sh` is made executable.
pub fn write(dir: &Path, files: &[ProjectFile]) -> Result<(), TemplateError> {
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| TemplateError::Write { path, source }
    };
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(TemplateError::NotEmpty(dir.to_owned()));
    }
    for file in files {
        let path = dir.join(file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(failed(parent))?;
        }
        // Never over a file that appeared meanwhile.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, file.text.as_bytes()))
            .map_err(failed(&path))?;
        if file.path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(failed(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_suit_every_language() {
        for good in ["x", "my-guest", "orders_v2", &"a".repeat(64)] {
            assert!(render(good, Language::Rust).is_ok(), "{good}");
        }
        for bad in [
            "",
            "X",
            "1x",
            "-x",
            "my guest",
            "../x",
            "x.y",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(render(bad, Language::C), Err(TemplateError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for language in [Language::Rust, Language::Js, Language::Python, Language::C] {
            let files = render("my-guest", language).expect("renders");
            for file in &files {
                assert!(!file.text.contains("{{"), "{language:?} {}", file.path);
            }
            let build = files
                .iter()
                .find(|f| f.path == "build.sh")
                .expect("build.sh");
            assert!(build.text.contains("my-guest.wasm"), "{language:?}");
            let readme = files
                .iter()
                .find(|f| f.path == "README.md")
                .expect("README");
            assert!(
                !readme.text.contains("change ``"),
                "{language:?}: names its source file"
            );
        }
    }

    #[test]
    fn an_existing_project_is_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("pgws-template-{}", std::process::id()));
        let files = render("x", Language::Js).expect("renders");
        write(&dir, &files).expect("a new directory");
        assert!(matches!(
            write(&dir, &files),
            Err(TemplateError::NotEmpty(_))
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
