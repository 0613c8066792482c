//! The kernel stanzas of a Packages index: parsing (only the packages
//! natvet may need), and the validation of every field natvet uses before
//! it reaches a URL, a path or a command.

use std::io::BufRead;

use crate::kernel::{PackageInfo, Trust};

/// One kernel-related stanza of a Packages index.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stanza {
    pub package: String,
    pub version: String,
    pub filename: String,
    pub sha256: String,
    pub size: u64,
    pub depends: String,
    pub suite: String,
    /// The archive's URI (Debian's security suites live in an archive of
    /// their own); set when the index is loaded.
    #[serde(skip)]
    pub uri: String,
    /// The repository's name; set when the index is loaded.
    #[serde(skip)]
    pub repository: String,
    /// Who vouched for the index that lists it; set when the index is loaded.
    #[serde(skip)]
    pub trust: Trust,
}

impl Stanza {
    pub fn info(&self) -> PackageInfo {
        PackageInfo {
            name: self.package.clone(),
            version: self.version.clone(),
            suite: self.suite.clone(),
            sha256: self.sha256.clone(),
            filename: self.filename.clone(),
            repository: self.repository.clone(),
            trust: self.trust.clone(),
        }
    }

    /// Package names this stanza depends on (first alternative of each group).
    pub fn depends_names(&self) -> Vec<String> {
        self.depends
            .split(',')
            .filter_map(|g| g.split('|').next())
            .filter_map(|alt| alt.split_whitespace().next())
            .map(|n| n.split(':').next().unwrap_or(n).to_string())
            .collect()
    }

    /// The file name of its `.deb` (the last part of `Filename`).
    pub fn deb_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }

    /// Is every field natvet uses well-formed? Package and Version end up
    /// in cache paths and messages, Filename in a URL and a file name,
    /// SHA256 and Size decide whether a download is the right file.
    pub fn validate(&self) -> Result<(), String> {
        let p = &self.package;
        if !valid_package_name(p) {
            return Err(format!("package name `{p}` is not a Debian package name"));
        }
        if !valid_version(&self.version) {
            return Err(format!(
                "{p}: version `{}` is not a Debian version",
                self.version
            ));
        }
        if !valid_filename(&self.filename) {
            return Err(format!(
                "{p}: Filename `{}` is not a relative pool path to a .deb",
                self.filename
            ));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{p}: SHA256 `{}` is not a SHA-256", self.sha256));
        }
        if self.size == 0 {
            return Err(format!("{p}: no Size"));
        }
        Ok(())
    }
}

/// Debian policy 5.6.1: lower-case letters, digits, `+ - .`, two or more,
/// starting with a letter or digit.
pub fn valid_package_name(p: &str) -> bool {
    p.len() >= 2
        && p.len() <= 200
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b))
}

/// Debian policy 5.6.12: `[epoch:]upstream[-revision]`, of letters,
/// digits and `. + ~ - :`, upstream starting with a digit.
pub fn valid_version(v: &str) -> bool {
    let upstream = v.split_once(':').map(|(_, u)| u).unwrap_or(v);
    !v.is_empty()
        && v.len() <= 200
        && upstream.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~-:".contains(&b))
}

/// A relative path of plain parts (no `..`, no absolute path, no odd
/// characters) to a `.deb`.
pub fn valid_filename(f: &str) -> bool {
    f.len() <= 1000
        && f.ends_with(".deb")
        && !f.starts_with('/')
        && f.split('/').all(|part| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+~:-%".contains(&b))
        })
}

fn kept(pkg: &str, prefixes: &[String]) -> bool {
    pkg.starts_with("linux-source-") || prefixes.iter().any(|p| pkg.starts_with(p.as_str()))
}

/// Parse a Packages file, keeping the stanzas whose package names start
/// with one of `prefixes` (and `linux-source-`).
pub fn parse_packages(
    r: impl BufRead,
    suite: &str,
    prefixes: &[String],
) -> std::io::Result<Vec<Stanza>> {
    let mut out = Vec::new();
    let mut cur: Option<Stanza> = None;
    let mut skipping = false;
    let finish = |cur: &mut Option<Stanza>, out: &mut Vec<Stanza>| {
        if let Some(s) = cur.take() {
            if !s.filename.is_empty() && !s.version.is_empty() {
                out.push(s);
            }
        }
    };
    for line in r.lines() {
        let line = line?;
        if line.is_empty() {
            finish(&mut cur, &mut out);
            skipping = false;
            continue;
        }
        if skipping || line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k == "Package" {
            finish(&mut cur, &mut out);
            if kept(v, prefixes) {
                cur = Some(Stanza {
                    package: v.to_string(),
                    suite: suite.to_string(),
                    ..Default::default()
                });
            } else {
                skipping = true;
            }
            continue;
        }
        let Some(s) = cur.as_mut() else { continue };
        match k {
            "Version" => s.version = v.to_string(),
            "Filename" => s.filename = v.to_string(),
            "SHA256" => s.sha256 = v.to_ascii_lowercase(),
            "Size" => s.size = v.parse().unwrap_or(0),
            "Depends" => s.depends = v.to_string(),
            _ => {}
        }
    }
    finish(&mut cur, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::archive::tests::{prefixes, SAMPLE};

    #[test]
    fn parses_only_kernel_stanzas() {
        let st = parse_packages(SAMPLE.as_bytes(), "bookworm", &prefixes()).unwrap();
        let names: Vec<_> = st.iter().map(|s| s.package.as_str()).collect();
        assert_eq!(
            names,
            [
                "linux-image-6.1.0-50-amd64",
                "linux-image-6.1.0-49-amd64",
                "linux-image-6.1.0-50-cloud-amd64",
                "linux-image-6.1.0-50-amd64-dbg",
                "linux-image-6.12.9-amd64"
            ]
        );
        assert_eq!(st[0].version, "6.1.170-1");
        assert_eq!(st[0].sha256, "aaaa");
        assert_eq!(st[0].size, 69000000);
        assert_eq!(st[0].suite, "bookworm");
        assert!(st[0].depends.starts_with("kmod, linux-base"));
    }

    #[test]
    fn validates_fields_before_use() {
        let good = Stanza {
            package: "linux-image-6.1.0-57-amd64".into(),
            version: "6.1.192-3".into(),
            filename:
                "pool/main/l/linux-signed-amd64/linux-image-6.1.0-57-amd64_6.1.192-3_amd64.deb"
                    .into(),
            sha256: "b66d757c30bf6106f190173c57fa867d2a4936c01f001baa812a1373ae425bb9".into(),
            size: 70400000,
            ..Default::default()
        };
        assert_eq!(good.validate(), Ok(()));
        let with = |f: &dyn Fn(&mut Stanza)| {
            let mut s = good.clone();
            f(&mut s);
            s.validate()
        };
        assert!(with(&|s| s.version = "6.1/../../x".into()).is_err());
        assert!(with(&|s| s.version = "$(reboot)".into()).is_err());
        assert!(with(&|s| s.package = "linux-image-../x".into()).is_err());
        assert!(with(&|s| s.package = "Linux".into()).is_err());
        assert!(with(&|s| s.filename = "../../etc/passwd.deb".into()).is_err());
        assert!(with(&|s| s.filename = "/abs/x.deb".into()).is_err());
        assert!(with(&|s| s.filename = "pool/x.tar".into()).is_err());
        assert!(with(&|s| s.filename = "pool/a b.deb".into()).is_err());
        assert!(with(&|s| s.sha256 = "aaaa".into()).is_err());
        assert!(with(&|s| s.size = 0).is_err());
        assert!(valid_version("1:2.0~rc1+dfsg-1ubuntu0.1"));
        assert!(!valid_version("x1.0"));
    }
}
