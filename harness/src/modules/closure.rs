//! The dependency closure of modules, dependencies first, each once: which
//! module files the host puts in an initramfs, and the order the guest loads
//! them in.

use std::collections::HashSet;

use super::{name_from_path, ModuleError, ModuleIndex, Resolved};

impl ModuleIndex {
    /// Dependency closure of the named modules / aliases as relative paths,
    /// dependencies first, each once. Soft dependencies (`pre:` before,
    /// `post:` after the module) are included when they resolve; unresolvable
    /// soft dependencies are ignored. Built-in names contribute nothing.
    pub fn load_order(&self, names: &[&str]) -> Result<Vec<String>, ModuleError> {
        let mut roots = Vec::new();
        let mut unknown = Vec::new();
        for n in names {
            let c = self.candidates(n);
            if !c.is_empty() {
                roots.extend(c);
            } else if self.resolve(n) != Resolved::Builtin {
                unknown.push(n.to_string());
            }
        }
        if !unknown.is_empty() {
            return Err(ModuleError::Unknown(unknown));
        }
        let mut out = Vec::new();
        let mut state: HashSet<String> = HashSet::new();
        for r in &roots {
            self.visit(r, &mut state, &mut out);
        }
        Ok(out)
    }

    /// Names in the hard (modules.dep only) closure of `roots`.
    pub(super) fn hard_closure(&self, roots: &[String]) -> HashSet<String> {
        let mut seen = HashSet::new();
        let mut stack: Vec<String> = roots.to_vec();
        while let Some(n) = stack.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(e) = self.modules.get(&n) {
                stack.extend(e.deps.iter().map(|d| name_from_path(d)));
            }
        }
        seen
    }

    fn visit(&self, name: &str, state: &mut HashSet<String>, out: &mut Vec<String>) {
        if !state.insert(name.to_string()) {
            return;
        }
        let Some(entry) = self.modules.get(name) else {
            return;
        };
        let sd = self.softdeps.get(name);
        if let Some(sd) = sd {
            for p in &sd.pre {
                for m in self.candidates(p) {
                    self.visit(&m, state, out);
                }
            }
        }
        for d in &entry.deps {
            let dn = name_from_path(d);
            if self.modules.contains_key(&dn) {
                self.visit(&dn, state, out);
            } else if state.insert(dn) {
                // Inconsistent modules.dep: keep the path anyway.
                out.push(d.clone());
            }
        }
        out.push(entry.path.clone());
        if let Some(sd) = sd {
            for p in &sd.post {
                for m in self.candidates(p) {
                    self.visit(&m, state, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::index;
    use super::*;

    #[test]
    fn load_order_closure() {
        let (_d, i) = index();
        let o = i
            .load_order(&["nft-chain-2-nat", "nf_conntrack", "ext4"])
            .unwrap();
        assert_eq!(
            o,
            [
                "kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko.xz",
                "kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko.xz",
                "kernel/crypto/crc32c_generic.ko.xz",
                "kernel/lib/libcrc32c.ko.xz",
                "kernel/net/netfilter/nf_conntrack.ko.xz",
                "kernel/net/netfilter/nf_nat.ko.xz",
                "kernel/net/netfilter/nft_chain_nat.ko.xz",
            ]
        );
        // post softdep that does not resolve is ignored
        assert_eq!(
            i.load_order(&["fs-9p"]).unwrap(),
            ["kernel/net/9p/9pnet.ko.xz", "kernel/fs/9p/9p.ko.xz"]
        );
        match i.load_order(&["nf_nat", "bogus", "fs-nothing"]) {
            Err(ModuleError::Unknown(u)) => assert_eq!(u, ["bogus", "fs-nothing"]),
            other => panic!("{other:?}"),
        }
        assert!(i.load_order(&["nfnetlink"]).unwrap().is_empty());
    }
}
