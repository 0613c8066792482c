//! Debian-format apt repositories natvet takes kernels from: Debian's own
//! archive (built in, see `sources/debian.rs`), the `[[repository]]`
//! entries of vm-images/matrix.toml (Ubuntu's archive ships there), and
//! those given with `--repository`. Each has a name, which is its kernel
//! specs' scheme (`ubuntu:6.8`, `acme:6.12`), one or more archives (URI,
//! suites, components, keys) and a package naming (which packages make a
//! kernel, which flavour is the generic one).
//!
//! Every repository's indexes are verified against its keys (see
//! `archive/`); `--allow-unsigned` lifts that for repositories given with
//! `--repository` only, and the results say so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::apt_sources;
use super::error::{ErrorClass, SourceError};
use super::openpgp::Keys;

/// A Debian-format repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The scheme of its kernel specs (`debian`, `ubuntu`, `acme`).
    pub name: String,
    /// What `natvet kernels list --all` calls it.
    pub description: String,
    pub archives: Vec<Archive>,
    pub naming: Naming,
    /// Indexes need no signature (`--allow-unsigned`, `--repository` only).
    pub allow_unsigned: bool,
    /// Said when its index is read (e.g. a security archive not configured).
    pub notes: Vec<String>,
}

/// One archive of a repository: a URI and the suites natvet reads there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Without a trailing slash.
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub keys: Keys,
    /// apt's `Check-Valid-Until` (true unless turned off, for snapshot mirrors).
    pub check_valid_until: bool,
}

/// Which packages make a kernel of a repository, `{release}` standing for
/// its release (`6.1.0-57-amd64`, `6.8.0-31-generic`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    /// The generic flavour: a release `X-FLAVOUR` whose X is a plain version.
    pub flavour: String,
    /// The image package, in order of preference (signed before unsigned).
    pub images: Vec<String>,
    /// Packages unpacked with the image when the index has them (split
    /// layouts: Debian 6.19+ `linux-binary-` + `linux-modules-`; Ubuntu's
    /// `linux-modules-` + `linux-modules-extra-`).
    pub parts: Vec<String>,
}

impl Naming {
    pub fn debian() -> Naming {
        Naming {
            flavour: "amd64".into(),
            images: vec![
                "linux-image-{release}".into(),
                "linux-image-{release}-unsigned".into(),
            ],
            parts: vec![
                "linux-binary-{release}".into(),
                "linux-modules-{release}".into(),
            ],
        }
    }

    pub fn ubuntu() -> Naming {
        Naming {
            flavour: "generic".into(),
            images: vec![
                "linux-image-{release}".into(),
                "linux-image-unsigned-{release}".into(),
            ],
            parts: vec![
                "linux-modules-{release}".into(),
                "linux-modules-extra-{release}".into(),
            ],
        }
    }

    fn preset(name: &str) -> Option<Naming> {
        match name {
            "debian" => Some(Naming::debian()),
            "ubuntu" => Some(Naming::ubuntu()),
            _ => None,
        }
    }

    /// The release an image package is named for (any flavour), if it is one.
    pub fn image_release<'a>(&self, package: &'a str) -> Option<&'a str> {
        self.images.iter().find_map(|t| template_match(t, package))
    }

    /// A package name of `template` for `release`.
    pub fn name(template: &str, release: &str) -> String {
        template.replace("{release}", release)
    }

    /// True when the release is of the generic flavour (`6.1.0-57-amd64`,
    /// `6.12.95+deb12-amd64`, `6.8.0-31-generic`; not `-cloud-amd64`).
    pub fn is_generic(&self, release: &str) -> bool {
        let Some(base) = release.strip_suffix(&format!("-{}", self.flavour)) else {
            return false;
        };
        !base.is_empty()
            && base
                .replace("+deb", "")
                .bytes()
                .all(|c| c.is_ascii_digit() || c == b'.' || c == b'-')
    }

    /// Package name prefixes whose stanzas natvet keeps from an index.
    pub fn prefixes(&self) -> Vec<String> {
        self.images
            .iter()
            .chain(&self.parts)
            .filter_map(|t| t.split("{release}").next())
            .map(str::to_string)
            .collect()
    }
}

/// The release in `package` if it is written as `template`: it starts with
/// a digit and is not a debug package.
fn template_match<'a>(template: &str, package: &'a str) -> Option<&'a str> {
    let (pre, post) = template.split_once("{release}")?;
    let r = package.strip_prefix(pre)?.strip_suffix(post)?;
    (r.starts_with(|c: char| c.is_ascii_digit()) && !r.ends_with("-dbg") && !r.contains("-dbg-"))
        .then_some(r)
}

/// What is wrong with a repository's configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryError {
    #[error("repository {origin}: {reason}; a repository is written NAME=URI suites=S1,S2 [components=main] [keyring=PATH] [naming=debian|ubuntu] [flavour=F], or given as a TOML file of [[repository]] entries (see vm-images/matrix.toml)")]
    Bad { origin: String, reason: String },
}

impl SourceError for RepositoryError {
    fn class(&self) -> ErrorClass {
        ErrorClass::BadInput
    }
}

/// A `[[repository]]` entry as written (matrix.toml, a --repository file).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    description: Option<String>,
    uri: String,
    suites: Vec<String>,
    #[serde(default)]
    components: Vec<String>,
    #[serde(default)]
    keyring: Option<PathBuf>,
    #[serde(default)]
    keyrings: Vec<PathBuf>,
    #[serde(default)]
    fingerprints: Vec<String>,
    #[serde(default)]
    naming: Option<String>,
    #[serde(default)]
    flavour: Option<String>,
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    parts: Vec<String>,
    #[serde(default)]
    check_valid_until: Option<bool>,
}

#[derive(serde::Deserialize)]
struct File {
    #[serde(default)]
    repository: Vec<Entry>,
}

/// Names a repository may not take: other sources' schemes.
const RESERVED: &[&str] = &["debian", "build", "local", "file"];

fn plain_word(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

impl Entry {
    fn into_repository(
        self,
        origin: &str,
        allow_unsigned: bool,
        host: &[apt_sources::AptEntry],
    ) -> Result<Repository, RepositoryError> {
        let bad = |reason: String| RepositoryError::Bad {
            origin: origin.to_string(),
            reason,
        };
        let name = self.name.trim().to_string();
        let name_ok = name.len() <= 32
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(bad(format!(
                "name `{name}` must be lower-case letters, digits and '-', starting with a letter (it is the scheme of its kernel specs, e.g. {name}:6.12)"
            )));
        }
        if RESERVED.contains(&name.as_str()) {
            return Err(bad(format!(
                "name `{name}` is taken by a built-in kernel source; choose another"
            )));
        }
        let uri = self.uri.trim().trim_end_matches('/').to_string();
        if !(uri.starts_with("http://") || uri.starts_with("https://"))
            || uri.contains(char::is_whitespace)
        {
            return Err(bad(format!(
                "uri `{uri}` is not an http:// or https:// URI"
            )));
        }
        if self.suites.is_empty() {
            return Err(bad("it names no suites (suites=...)".into()));
        }
        for s in self.suites.iter().chain(&self.components) {
            if !plain_word(s) {
                return Err(bad(format!(
                    "`{s}` is not a suite or component name (letters, digits, '.', '_', '+', '-')"
                )));
            }
        }
        let mut naming = match self.naming.as_deref() {
            None => Naming::debian(),
            Some(n) => Naming::preset(n)
                .ok_or_else(|| bad(format!("naming `{n}` is unknown; use debian or ubuntu")))?,
        };
        if let Some(f) = self.flavour {
            if !plain_word(&f) {
                return Err(bad(format!("flavour `{f}` is not a plain word")));
            }
            naming.flavour = f;
        }
        for (list, into) in [
            (self.images, &mut naming.images),
            (self.parts, &mut naming.parts),
        ] {
            if list.is_empty() {
                continue;
            }
            for t in &list {
                let ok =
                    t.matches("{release}").count() == 1 && plain_word(&t.replace("{release}", "x"));
                if !ok {
                    return Err(bad(format!(
                        "package template `{t}` must hold {{release}} once (e.g. linux-image-{{release}})"
                    )));
                }
            }
            *into = list;
        }
        let mut keys = Keys {
            keyrings: self.keyring.into_iter().chain(self.keyrings).collect(),
            inline: vec![],
            fingerprints: self
                .fingerprints
                .iter()
                .map(|f| f.replace(' ', "").to_ascii_uppercase())
                .collect(),
        };
        if keys.keyrings.is_empty() {
            // The host's apt source for the same URI may name its keyring.
            if let Some(k) = host
                .iter()
                .filter(|e| e.uris.iter().any(|u| u.trim_end_matches('/') == uri))
                .find_map(|e| e.keys())
            {
                keys.keyrings = k.keyrings;
                keys.inline = k.inline;
                keys.fingerprints.extend(k.fingerprints);
            }
        }
        if keys.keyrings.is_empty() && keys.inline.is_empty() && !allow_unsigned {
            return Err(bad(
                "it names no keyring to check its signatures with: add keyring=PATH (the repository's public key), or --allow-unsigned for a local test repository".into(),
            ));
        }
        Ok(Repository {
            description: self
                .description
                .unwrap_or_else(|| format!("repository {name} ({uri})")),
            name,
            archives: vec![Archive {
                uri,
                suites: self.suites,
                components: if self.components.is_empty() {
                    vec!["main".into()]
                } else {
                    self.components
                },
                keys,
                check_valid_until: self.check_valid_until.unwrap_or(true),
            }],
            naming,
            allow_unsigned,
            notes: vec![],
        })
    }
}

/// The `[[repository]]` entries of a TOML text.
fn from_toml(
    text: &str,
    origin: &str,
    allow_unsigned: bool,
    host: &[apt_sources::AptEntry],
) -> Result<Vec<Repository>, RepositoryError> {
    let file: File = toml::from_str(text).map_err(|e| RepositoryError::Bad {
        origin: origin.to_string(),
        reason: e.to_string().trim().to_string(),
    })?;
    file.repository
        .into_iter()
        .map(|e| e.into_repository(origin, allow_unsigned, host))
        .collect()
}

/// A `--repository` value: a TOML file of `[[repository]]` entries, or
/// `NAME=URI key=value...` (values of suites/components/keyrings
/// comma-separated).
pub fn parse_cli(
    value: &str,
    allow_unsigned: bool,
    host: &[apt_sources::AptEntry],
) -> Result<Vec<Repository>, RepositoryError> {
    let v = value.trim();
    let origin = format!("--repository {v}");
    let bad = |reason: String| RepositoryError::Bad {
        origin: origin.clone(),
        reason,
    };
    let mut toks = v.split_whitespace();
    let first = toks.next().ok_or_else(|| bad("it is empty".into()))?;
    let Some((name, uri)) = first.split_once('=').filter(|(_, u)| u.contains("://")) else {
        let path = Path::new(v);
        let text = std::fs::read_to_string(path).map_err(|e| {
            bad(format!(
                "it is neither NAME=URI ... nor a readable TOML file ({e})"
            ))
        })?;
        return from_toml(&text, &path.display().to_string(), allow_unsigned, host);
    };
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut e = Entry {
        name: name.to_string(),
        description: None,
        uri: uri.to_string(),
        suites: vec![],
        components: vec![],
        keyring: None,
        keyrings: vec![],
        fingerprints: vec![],
        naming: None,
        flavour: None,
        images: vec![],
        parts: vec![],
        check_valid_until: None,
    };
    for t in toks {
        let (k, val) = t
            .split_once('=')
            .ok_or_else(|| bad(format!("`{t}` is not key=value")))?;
        match k {
            "suites" | "suite" => e.suites.extend(list(val)),
            "components" | "component" => e.components.extend(list(val)),
            "keyring" | "keyrings" => e.keyrings.extend(list(val).into_iter().map(PathBuf::from)),
            "fingerprints" | "fingerprint" => e.fingerprints.extend(list(val)),
            "naming" => e.naming = Some(val.to_string()),
            "flavour" | "flavor" => e.flavour = Some(val.to_string()),
            "images" => e.images.extend(list(val)),
            "parts" => e.parts.extend(list(val)),
            "check-valid-until" | "check_valid_until" => {
                e.check_valid_until = Some(!matches!(val, "no" | "false" | "0"))
            }
            other => return Err(bad(format!("unknown key `{other}`"))),
        }
    }
    Ok(vec![e.into_repository(&origin, allow_unsigned, host)?])
}

/// The repositories shipped in vm-images/matrix.toml.
pub fn shipped() -> Result<Vec<Repository>, RepositoryError> {
    from_toml(
        crate::kernel_sets::KERNEL_SETS,
        "vm-images/matrix.toml",
        false,
        &apt_sources::host_entries(),
    )
}

static CONFIGURED: OnceLock<Vec<Repository>> = OnceLock::new();

/// Set the repositories of this process: the shipped ones and those given
/// with `--repository` (`allow_unsigned` applies to the latter). Call once,
/// before any kernel spec is parsed.
pub fn configure(cli: &[String], allow_unsigned: bool) -> Result<(), RepositoryError> {
    if allow_unsigned && cli.is_empty() {
        return Err(RepositoryError::Bad {
            origin: "--allow-unsigned".into(),
            reason: "it applies only to repositories given with --repository (Debian's archive and vm-images/matrix.toml's are always verified)".into(),
        });
    }
    let host = apt_sources::host_entries();
    let mut all = shipped()?;
    for v in cli {
        for r in parse_cli(v, allow_unsigned, &host)? {
            all.retain(|x| x.name != r.name);
            all.push(r);
        }
    }
    let _ = CONFIGURED.set(all);
    Ok(())
}

/// The repositories of this process (the shipped ones unless [`configure`]d).
pub fn configured() -> &'static [Repository] {
    CONFIGURED.get_or_init(|| shipped().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namings() {
        let d = Naming::debian();
        assert_eq!(
            d.image_release("linux-image-6.1.0-57-amd64"),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            d.image_release("linux-image-6.1.0-57-amd64-unsigned"),
            Some("6.1.0-57-amd64-unsigned")
        );
        assert!(!d.is_generic("6.1.0-57-amd64-unsigned"));
        assert_eq!(d.image_release("linux-image-amd64"), None);
        assert_eq!(d.image_release("linux-image-6.1.0-57-amd64-dbg"), None);
        assert!(d.is_generic("6.12.95+deb12-amd64") && d.is_generic("7.3-amd64"));
        assert!(!d.is_generic("6.1.0-50-cloud-amd64") && !d.is_generic("6.1.0-0.deb11.52-amd64"));
        let u = Naming::ubuntu();
        assert_eq!(
            u.image_release("linux-image-unsigned-6.8.0-31-generic"),
            Some("6.8.0-31-generic")
        );
        assert!(u.is_generic("6.8.0-31-generic") && !u.is_generic("6.8.0-1009-aws"));
        assert_eq!(
            u.prefixes(),
            [
                "linux-image-",
                "linux-image-unsigned-",
                "linux-modules-",
                "linux-modules-extra-"
            ]
        );
    }

    #[test]
    fn the_shipped_entries_parse() {
        let host = vec![];
        let r = from_toml(crate::kernel_sets::KERNEL_SETS, "matrix.toml", false, &host).unwrap();
        let ubuntu = r
            .iter()
            .find(|r| r.name == "ubuntu")
            .expect("ubuntu is shipped");
        assert_eq!(ubuntu.naming, Naming::ubuntu());
        assert!(ubuntu.archives[0]
            .suites
            .iter()
            .any(|s| s.ends_with("-security")));
        assert!(!ubuntu.archives[0].keys.keyrings.is_empty());
    }

    #[test]
    fn command_line_repositories() {
        let host = vec![];
        let r = parse_cli(
            "acme=http://127.0.0.1:8080/apt/ suites=stable,testing keyring=/k.gpg",
            false,
            &host,
        )
        .unwrap();
        assert_eq!(r[0].name, "acme");
        assert_eq!(r[0].archives[0].uri, "http://127.0.0.1:8080/apt");
        assert_eq!(r[0].archives[0].suites, ["stable", "testing"]);
        assert_eq!(r[0].archives[0].components, ["main"]);
        assert!(!r[0].allow_unsigned);
        let e = |v: &str| parse_cli(v, false, &host).unwrap_err().to_string();
        assert!(e("acme=http://x suites=s").contains("no keyring"));
        assert!(parse_cli("acme=http://x suites=s", true, &host).unwrap()[0].allow_unsigned);
        assert!(e("debian=http://x suites=s keyring=/k").contains("taken"));
        assert!(e("Acme=http://x suites=s keyring=/k").contains("lower-case"));
        assert!(e("acme=ftp://x suites=s keyring=/k").contains("http"));
        assert!(e("acme=http://x suites=../x keyring=/k").contains("not a suite"));
        assert!(e("acme=http://x keyring=/k").contains("no suites"));
        assert!(e("acme=http://x suites=s keyring=/k colour=red").contains("unknown key"));
        assert!(e("/nonexistent/repos.toml").contains("readable TOML"));
        // The host's apt source for the same URI gives its keyring.
        let host = apt_sources::parse_deb822(
            "Types: deb\nURIs: http://apt.acme.example/\nSuites: s\nSigned-By: /etc/apt/keyrings/acme.gpg\n",
        );
        let r = parse_cli("acme=http://apt.acme.example suites=s", false, &host).unwrap();
        assert_eq!(
            r[0].archives[0].keys.keyrings,
            [PathBuf::from("/etc/apt/keyrings/acme.gpg")]
        );
    }
}
