//! `debian:QUERY`: Debian's archive and its security archive. The mirrors
//! come from the host's apt sources (`NATVET_DEBIAN_MIRROR` and
//! `NATVET_DEBIAN_SECURITY_MIRROR` override them), with the keyrings their
//! entries name (`Signed-By`), else Debian's archive keyring. The source
//! itself is an apt repository like any other (`apt.rs`); this file says
//! which suites Debian has and where they are.

use super::apt::{AptSource, Which};
use crate::kernel::apt_sources::{self, AptEntry};
use crate::kernel::archive::ArchiveError;
use crate::kernel::openpgp::{Keys, DEBIAN_KEYRING};
use crate::kernel::repository::{Archive, Naming, Repository};
use crate::kernel::KernelError;

/// Suites of Debian's main archive, oldest first.
pub const SUITES: &[&str] = &[
    "bullseye",
    "bookworm",
    "bookworm-backports",
    "trixie",
    "trixie-backports",
    "forky",
    "sid",
    "experimental",
];

/// Suites of Debian's security archive: the kernels patched servers run.
pub const SECURITY_SUITES: &[&str] = &[
    "bullseye-security",
    "bookworm-security",
    "trixie-security",
    "forky-security",
];

/// The `debian:` source: its repository looked up each time it is read (the
/// host's apt sources can change), its kernels at the cache root.
pub(super) fn source() -> AptSource {
    AptSource {
        name: "debian",
        prefix: "debian:",
        forms: &[
            "debian:LINE (e.g. debian:6.12)",
            "debian:RELEASE (e.g. debian:6.1.0-50-amd64)",
        ],
        endpoint: "debian:RELEASE",
        suites: SUITES
            .iter()
            .chain(SECURITY_SUITES)
            .map(|s| s.to_string())
            .collect(),
        naming: Naming::debian(),
        which: Which::LookedUp(repository),
        cache_by_name: false,
    }
}

fn env_uri(var: &str) -> Option<String> {
    std::env::var(var)
        .ok()
        .map(|m| m.trim().trim_end_matches('/').to_string())
        .filter(|m| !m.is_empty())
}

/// Debian's repository as this host reaches it.
pub(crate) fn repository() -> Result<Repository, KernelError> {
    repository_from(
        &apt_sources::host_entries(),
        env_uri("NATVET_DEBIAN_MIRROR"),
        env_uri("NATVET_DEBIAN_SECURITY_MIRROR"),
    )
}

fn archive_of(entry: Option<&AptEntry>, uri: String, suites: &[&str], overridden: bool) -> Archive {
    // An overriding URI is not the entry's: its Signed-By does not apply.
    let entry = entry.filter(|_| !overridden);
    Archive {
        uri,
        suites: suites.iter().map(|s| s.to_string()).collect(),
        components: vec!["main".into()],
        keys: entry
            .and_then(AptEntry::keys)
            .unwrap_or_else(|| Keys::keyring(DEBIAN_KEYRING)),
        check_valid_until: entry.is_none_or(|e| e.check_valid_until),
    }
}

fn repository_from(
    entries: &[AptEntry],
    main_env: Option<String>,
    security_env: Option<String>,
) -> Result<Repository, KernelError> {
    let main_entry = entries
        .iter()
        .find(|e| !e.is_security() && e.http_uri().is_some());
    let security_entry = entries
        .iter()
        .find(|e| e.is_security() && e.http_uri().is_some());
    let main_uri = main_env
        .clone()
        .or_else(|| main_entry.and_then(AptEntry::http_uri))
        .ok_or(ArchiveError::NoMirror)?;
    let mut archives = vec![archive_of(main_entry, main_uri, SUITES, main_env.is_some())];
    let mut notes = vec![];
    match security_env
        .clone()
        .or_else(|| security_entry.and_then(AptEntry::http_uri))
    {
        Some(uri) => archives.push(archive_of(
            security_entry,
            uri,
            SECURITY_SUITES,
            security_env.is_some(),
        )),
        None => notes.push(
            "no Debian security archive in the host's apt sources: the -security suites (the kernels patched servers run) are left out; set NATVET_DEBIAN_SECURITY_MIRROR=http://MIRROR/debian-security".into(),
        ),
    }
    Ok(Repository {
        name: "debian".into(),
        description: "Debian's archive and security archive".into(),
        archives,
        naming: Naming::debian(),
        allow_unsigned: false,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn mirrors_and_keys_from_the_host() {
        let entries = apt_sources::parse_deb822(
            "Types: deb\nURIs: https://m.example/debian-security\nSuites: bookworm-security\nSigned-By: /sec.gpg\n\n\
             Types: deb\nURIs: http://m.example/debian/\nSuites: bookworm bookworm-updates\n",
        );
        let r = repository_from(&entries, None, None).unwrap();
        assert_eq!(r.archives.len(), 2);
        assert_eq!(r.archives[0].uri, "http://m.example/debian");
        assert_eq!(r.archives[0].keys.keyrings, [PathBuf::from(DEBIAN_KEYRING)]);
        assert!(r.archives[0].suites.iter().any(|s| s == "sid"));
        assert_eq!(r.archives[1].uri, "https://m.example/debian-security");
        assert_eq!(r.archives[1].keys.keyrings, [PathBuf::from("/sec.gpg")]);
        assert_eq!(r.archives[1].suites, SECURITY_SUITES);
        assert!(r.notes.is_empty());
        // Overridden: the entry's keyring does not follow.
        let r = repository_from(&entries, None, Some("http://other/sec".into())).unwrap();
        assert_eq!(r.archives[1].uri, "http://other/sec");
        assert_eq!(r.archives[1].keys.keyrings, [PathBuf::from(DEBIAN_KEYRING)]);
        // No security archive: said, not silent.
        let main_only = apt_sources::parse_deb822(
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm\n",
        );
        let r = repository_from(&main_only, None, None).unwrap();
        assert_eq!(r.archives.len(), 1);
        assert!(r.notes[0].contains("NATVET_DEBIAN_SECURITY_MIRROR"));
        let e = repository_from(&[], None, None).unwrap_err();
        assert!(e.is_user_error() && e.to_string().contains("NATVET_DEBIAN_MIRROR"));
    }
}
