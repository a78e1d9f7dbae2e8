//! The configuration directory: host identities, `hipd.conf`, hosts files.
//!
//! # Layout (default `/etc/hip`)
//! * `hip_host_ecdsa_key.pem`, `hip_host_rsa_key.pem` — private host
//!   identities (PKCS#8 PEM, mode 0600). Generated on first start when the
//!   directory holds no `hip_host_*_key.pem`: one ECDSA P-256 key and one
//!   RSA-2048 key. Every `hip_host_*_key.pem` found is loaded (sorted by
//!   name); the **default identity** is the first one whose file name
//!   contains the `default-hi` setting of `hipd.conf` (`ecdsa` when unset).
//! * `hipd.conf` — one command per line, in `hipconf daemon` syntax without
//!   the prefix (`add map HIT IP [LSI] [udp|native]`, `nat plain-udp`,
//!   `debug medium`, `shotgun on`, `set puzzle K`), plus the daemon-only
//!   settings `default-hi ecdsa|rsa` and `opportunistic on|off`. `#` starts a
//!   comment.
//! * `hosts` — HIPL's HIT/LSI ↔ name file: `HIT name…` or `LSI name…` per
//!   line.
//!
//! # Resolving a peer HIT to locators (like HIPL)
//! 1. static mappings (`hipd.conf`, `hipconf daemon add map`);
//! 2. the names of the HIT in `/etc/hip/hosts`, each looked up in the system
//!    hosts file (`/etc/hosts`, or `--system-hosts`); every address found is
//!    a candidate locator, in file order.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use hip_proto::crypto::{
    CryptoBackend, EcCurve, IdentitySpec, OpensslBackend, PrivateIdentity,
    generate_identity_with_rng,
};

use crate::control::{Request, parse_verbs};

/// A loaded private identity.
#[derive(Debug, Clone)]
pub struct LoadedIdentity {
    /// The key.
    pub key: Arc<dyn PrivateIdentity>,
    /// The file it came from.
    pub file: PathBuf,
}

/// Loads (generating on first start) the host identities; the default first.
pub fn load_identities(dir: &Path, default_hi: &str) -> anyhow::Result<Vec<LoadedIdentity>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = key_files(dir)?;
    if files.is_empty() {
        let backend = OpensslBackend::new();
        let mut rng = rand::rng();
        for (name, spec) in [
            ("hip_host_ecdsa_key.pem", IdentitySpec::Ecdsa(EcCurve::P256)),
            ("hip_host_rsa_key.pem", IdentitySpec::Rsa { bits: 2048 }),
        ] {
            let key = generate_identity_with_rng(&backend, spec, &mut rng)
                .map_err(|e| anyhow::anyhow!("generating {name}: {e}"))?;
            let pem = key
                .to_pkcs8_pem()
                .map_err(|e| anyhow::anyhow!("encoding {name}: {e}"))?;
            let path = dir.join(name);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&pem)?;
            tracing::info!(file = %path.display(), "generated host identity");
        }
        files = key_files(dir)?;
    }
    let backend = OpensslBackend::new();
    let mut out = Vec::new();
    for f in files {
        let pem = fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let key = backend
            .identity_from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", f.display()))?;
        out.push(LoadedIdentity {
            key: Arc::from(key),
            file: f,
        });
    }
    if let Some(pos) = out.iter().position(|i| {
        i.file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.contains(default_hi))
    }) {
        let d = out.remove(pos);
        out.insert(0, d);
    }
    Ok(out)
}

fn key_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hip_host_") && n.ends_with("_key.pem"))
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Settings read from `hipd.conf`.
#[derive(Debug, Clone, Default)]
pub struct ConfFile {
    /// Commands to apply at start (in file order).
    pub commands: Vec<Request>,
    /// `default-hi` (substring of the identity file name).
    pub default_hi: Option<String>,
    /// `opportunistic on|off`.
    pub opportunistic: Option<bool>,
}

/// Parses `hipd.conf` text; errors name the line.
pub fn parse_conf(text: &str) -> anyhow::Result<ConfFile> {
    let mut c = ConfFile::default();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["default-hi", v] => c.default_hi = Some((*v).to_string()),
            ["opportunistic", "on"] => c.opportunistic = Some(true),
            ["opportunistic", "off"] => c.opportunistic = Some(false),
            _ => match parse_verbs(&words) {
                Ok(r) => c.commands.push(r),
                Err(e) => bail!("hipd.conf line {}: {e}", n + 1),
            },
        }
    }
    Ok(c)
}

/// HIPL hosts file: HIT/LSI ↔ names.
#[derive(Debug, Clone, Default)]
pub struct HipHosts {
    /// HIT → names.
    pub hit_names: BTreeMap<Ipv6Addr, Vec<String>>,
    /// Name → LSI.
    pub name_lsi: BTreeMap<String, Ipv4Addr>,
}

impl HipHosts {
    /// Parses the file text (unparsable lines are skipped).
    pub fn parse(text: &str) -> HipHosts {
        let mut h = HipHosts::default();
        for raw in text.lines() {
            let line = raw.split('#').next().unwrap_or("");
            let mut it = line.split_whitespace();
            let Some(addr) = it.next() else { continue };
            let names: Vec<String> = it.map(str::to_string).collect();
            match addr.parse::<IpAddr>() {
                Ok(IpAddr::V6(hit)) => h.hit_names.entry(hit).or_default().extend(names),
                Ok(IpAddr::V4(lsi)) => {
                    for n in names {
                        h.name_lsi.insert(n, lsi);
                    }
                }
                Err(_) => {}
            }
        }
        h
    }

    /// The LSI given to one of the HIT's names, if any.
    pub fn lsi_of(&self, hit: Ipv6Addr) -> Option<Ipv4Addr> {
        self.hit_names
            .get(&hit)?
            .iter()
            .find_map(|n| self.name_lsi.get(n).copied())
    }
}

/// Looks `names` up in a system hosts file text (`/etc/hosts` format);
/// returns the addresses in file order, without duplicates.
pub fn resolve_in_hosts(text: &str, names: &[String]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("");
        let mut it = line.split_whitespace();
        let Some(Ok(addr)) = it.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if it.any(|n| names.iter().any(|m| m == n)) && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_parses_commands_and_settings() {
        let c = parse_conf(
            "# comment\n\ndefault-hi rsa\nopportunistic off\nnat plain-udp\nadd map 2001:2a::1 192.0.2.1 # x\n",
        )
        .unwrap();
        assert_eq!(c.default_hi.as_deref(), Some("rsa"));
        assert_eq!(c.opportunistic, Some(false));
        assert_eq!(c.commands.len(), 2);
        let e = parse_conf("nat\n").unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn hosts_resolution_chain() {
        let hip = HipHosts::parse("2001:2a::5 peer peer.example\n1.0.0.9 peer\njunk line\n");
        let hit: Ipv6Addr = "2001:2a::5".parse().unwrap();
        assert_eq!(hip.lsi_of(hit), Some(Ipv4Addr::new(1, 0, 0, 9)));
        let names = hip.hit_names[&hit].clone();
        let sys = "127.0.0.1 localhost\n2001:db8::2 peer\n192.0.2.2 peer other\n2001:db8::2 peer\n";
        assert_eq!(
            resolve_in_hosts(sys, &names),
            vec![
                "2001:db8::2".parse::<IpAddr>().unwrap(),
                "192.0.2.2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn identities_generated_once_and_default_selectable() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_identities(dir.path(), "ecdsa").unwrap();
        assert_eq!(a.len(), 2);
        assert!(a[0].file.ends_with("hip_host_ecdsa_key.pem"));
        let b = load_identities(dir.path(), "rsa").unwrap();
        assert!(b[0].file.ends_with("hip_host_rsa_key.pem"));
        // Same keys on the second start (not regenerated).
        let backend = OpensslBackend::new();
        let hit = |i: &LoadedIdentity| i.key.host_id().hit(&backend).unwrap();
        assert_eq!(hit(&a[0]), hit(&b[1]));
        assert_eq!(hit(&a[1]), hit(&b[0]));
    }
}
