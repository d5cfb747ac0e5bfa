//! Target configuration: backing-store strings (tgt's syntax), the command
//! line's `--lun`/`--chap` values and the TOML config file.

use crate::client::{SheepAddr, SnapSel};
use serde::Deserialize;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub const DEFAULT_PORT: u16 = 3260;
/// SAM flat-space addressing covers LUNs 0..=16383.
pub const MAX_LUN: u64 = 16383;

/// Where a LUN's blocks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A VDI (`snap` other than Working = read-only snapshot LUN).
    Sheep {
        addr: SheepAddr,
        vdi: String,
        snap: SnapSel,
    },
    /// `mem:SIZE`: blocks in memory, lost at exit (for testing initiators).
    Memory { size: u64 },
}

impl fmt::Display for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Sheep { addr, vdi, snap } => {
                match addr {
                    SheepAddr::Tcp { host, port } => write!(f, "tcp:{host}:{port}:{vdi}")?,
                    SheepAddr::Unix(p) => write!(f, "unix:{}:{vdi}", p.display())?,
                }
                match snap {
                    SnapSel::Working => Ok(()),
                    SnapSel::Tag(t) => write!(f, ":{t}"),
                    SnapSel::Id(n) => write!(f, ":{n}"),
                }
            }
            Backing::Memory { size } => write!(f, "mem:{size}"),
        }
    }
}

impl Backing {
    pub fn is_snapshot(&self) -> bool {
        matches!(self, Backing::Sheep { snap, .. } if !snap.is_working())
    }
}

impl FromStr for Backing {
    type Err = String;

    /// `tcp:HOST:PORT:VDI[:TAG|SNAPID]`, `unix:PATH:VDI[:TAG|SNAPID]`, `mem:SIZE`.
    fn from_str(s: &str) -> Result<Backing, String> {
        let bad = |why: &str| format!("invalid backing store '{s}': {why}");
        let fields: Vec<&str> = s.split(':').collect();
        let (addr, rest) = match fields[0] {
            "tcp" => {
                if fields.len() < 4 {
                    return Err(bad("expected tcp:HOST:PORT:VDI[:TAG|SNAPID]"));
                }
                if fields[1].is_empty() {
                    return Err(bad("empty host"));
                }
                let port = parse_port(fields[2])
                    .ok_or_else(|| bad(&format!("invalid port '{}'", fields[2])))?;
                (SheepAddr::tcp(fields[1], port), &fields[3..])
            }
            "unix" => {
                if fields.len() < 3 {
                    return Err(bad("expected unix:PATH:VDI[:TAG|SNAPID]"));
                }
                if fields[1].is_empty() {
                    return Err(bad("empty socket path"));
                }
                (SheepAddr::Unix(PathBuf::from(fields[1])), &fields[2..])
            }
            "mem" => {
                if fields.len() != 2 {
                    return Err(bad("expected mem:SIZE"));
                }
                let size =
                    crate::util::parse_size(fields[1]).map_err(|e| bad(&format!("size: {e}")))?;
                if size == 0 || size % 512 != 0 {
                    return Err(bad("size must be a non-zero multiple of 512"));
                }
                return Ok(Backing::Memory { size });
            }
            other => {
                return Err(bad(&format!(
                    "unknown protocol '{other}' (use tcp:, unix: or mem:)"
                )))
            }
        };
        if rest.len() > 2 {
            return Err(bad("too many ':'-separated fields"));
        }
        let vdi = rest[0];
        if vdi.is_empty() {
            return Err(bad("empty VDI name"));
        }
        if vdi.len() >= crate::proto::SD_MAX_VDI_LEN {
            return Err(bad("VDI name too long"));
        }
        let snap = match rest.get(1) {
            None => SnapSel::Working,
            Some(&"") => return Err(bad("empty snapshot tag or id")),
            Some(t) => match SnapSel::parse(t) {
                SnapSel::Id(0) => return Err(bad("snapshot id 0 names the working VDI; omit it")),
                SnapSel::Tag(t) if t.len() >= crate::proto::SD_MAX_VDI_TAG_LEN => {
                    return Err(bad("snapshot tag too long"))
                }
                sel => sel,
            },
        };
        Ok(Backing::Sheep {
            addr,
            vdi: vdi.to_string(),
            snap,
        })
    }
}

/// One LUN of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunConfig {
    pub id: u64,
    pub backing: Backing,
    /// Refuse writes even on a working VDI.
    pub read_only: bool,
}

/// `N=BACKING` from the command line.
impl FromStr for LunConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<LunConfig, String> {
        let (n, b) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid --lun '{s}': expected N=BACKING"))?;
        let id = parse_lun_id(n).map_err(|e| format!("invalid --lun '{s}': {e}"))?;
        let backing = b.parse().map_err(|e| format!("LUN {id}: {e}"))?;
        Ok(LunConfig {
            id,
            backing,
            read_only: false,
        })
    }
}

/// The client's port syntax, written with at most five digits.
fn parse_port(p: &str) -> Option<u16> {
    (p.len() <= 5)
        .then(|| crate::client::parse_port(p))
        .flatten()
}

fn parse_lun_id(n: &str) -> Result<u64, String> {
    let id: u64 = n
        .parse()
        .map_err(|_| format!("LUN number '{n}' is not a number"))?;
    if id > MAX_LUN {
        return Err(format!("LUN number {id} is above {MAX_LUN}"));
    }
    Ok(id)
}

/// CHAP user name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: String,
    pub secret: Vec<u8>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, <secret>)", self.user)
    }
}

impl FromStr for Credential {
    type Err = String;
    /// `USER:SECRET` (the secret may contain ':').
    fn from_str(s: &str) -> Result<Credential, String> {
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| "invalid CHAP credential: expected USER:SECRET".to_string())?;
        if u.is_empty() {
            return Err("invalid CHAP credential: empty user name".into());
        }
        if p.is_empty() {
            return Err(format!(
                "invalid CHAP credential for user '{u}': empty secret"
            ));
        }
        if u.len() > 255 || p.len() > 255 {
            return Err(format!(
                "invalid CHAP credential for user '{u}': longer than 255 bytes"
            ));
        }
        Ok(Credential {
            user: u.to_string(),
            secret: p.as_bytes().to_vec(),
        })
    }
}

/// One target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetConfig {
    /// The iSCSI name (stored lower-case; iSCSI names compare case-insensitively).
    pub name: String,
    /// tgtadm's target id; `None` = the next free one.
    pub tid: Option<u32>,
    pub alias: Option<String>,
    pub luns: Vec<LunConfig>,
    /// Initiators must authenticate with one of these (none = no CHAP).
    pub chap: Vec<Credential>,
    /// What the target answers when an initiator asks for mutual CHAP.
    pub mutual_chap: Option<Credential>,
    /// Initiator names allowed to log in.
    pub initiators: Vec<String>,
    /// Initiator addresses allowed to log in: `ALL`, an IP or IP/PREFIX.
    /// With neither names nor addresses, every initiator may log in.
    pub addresses: Vec<String>,
}

impl TargetConfig {
    pub fn validate(&self) -> Result<(), String> {
        validate_iscsi_name(&self.name)?;
        let mut seen = std::collections::BTreeSet::new();
        for l in &self.luns {
            if !seen.insert(l.id) {
                return Err(format!("target {}: LUN {} defined twice", self.name, l.id));
            }
        }
        if self.tid == Some(0) {
            return Err(format!("target {}: tid 0 is reserved", self.name));
        }
        for i in &self.initiators {
            validate_iscsi_name(i)?;
        }
        for a in &self.addresses {
            parse_acl_address(a).map_err(|e| format!("target {}: {e}", self.name))?;
        }
        Ok(())
    }

    /// Whether this initiator (name, and address when known) may log in:
    /// any ACL entry matching is enough (tgt's rule); no entries admit all.
    pub fn allows(&self, initiator: &str, addr: Option<IpAddr>) -> bool {
        if self.initiators.is_empty() && self.addresses.is_empty() {
            return true;
        }
        let by_name = self
            .initiators
            .iter()
            .any(|i| i.eq_ignore_ascii_case(initiator));
        let by_addr = self.addresses.iter().any(|a| match parse_acl_address(a) {
            Ok(AclAddr::All) => true,
            Ok(AclAddr::Net(net, bits)) => addr.is_some_and(|ip| in_net(ip, net, bits)),
            Err(_) => false,
        });
        by_name || by_addr
    }

    /// Whether anyone who can reach a portal can log in: no CHAP, and no
    /// ACL narrower than `ALL`.
    pub fn is_open(&self) -> bool {
        self.chap.is_empty()
            && self.initiators.is_empty()
            && self
                .addresses
                .iter()
                .all(|a| matches!(parse_acl_address(a), Ok(AclAddr::All)))
    }
}

/// An address ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclAddr {
    All,
    /// Network address and prefix length.
    Net(IpAddr, u8),
}

/// `ALL`, `IP` or `IP/PREFIX` (tgt's `-I` values).
pub fn parse_acl_address(s: &str) -> Result<AclAddr, String> {
    if s.eq_ignore_ascii_case("ALL") {
        return Ok(AclAddr::All);
    }
    let bad = || format!("invalid initiator address '{s}': expected ALL, IP or IP/PREFIX");
    let (ip, bits) = match s.split_once('/') {
        Some((ip, b)) => (ip, Some(b)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = match bits {
        None => max,
        Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(bad)?,
    };
    Ok(AclAddr::Net(ip, bits))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, n, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(a), IpAddr::V4(n)) => match a.to_ipv4_mapped() {
            Some(a) => (u32::from(a) as u128, u32::from(n) as u128, 32),
            None => return false,
        },
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        (IpAddr::V4(_), IpAddr::V6(_)) => return false,
    };
    let shift = width - u32::from(bits);
    if shift >= 128 {
        return true;
    }
    (a >> shift) == (n >> shift)
}

/// iqn./eui./naa. names, at most 223 bytes (RFC 7143 §4.2.7).
pub fn validate_iscsi_name(n: &str) -> Result<(), String> {
    let lower = n.to_ascii_lowercase();
    let ok_prefix = ["iqn.", "eui.", "naa."]
        .iter()
        .any(|p| lower.starts_with(p));
    if !ok_prefix {
        return Err(format!(
            "invalid iSCSI name '{n}': must start with iqn., eui. or naa."
        ));
    }
    if n.len() > 223 {
        return Err(format!("invalid iSCSI name '{n}': longer than 223 bytes"));
    }
    if let Some(c) = n
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ".-:".contains(*c)))
    {
        return Err(format!(
            "invalid iSCSI name '{n}': character {c:?} not allowed"
        ));
    }
    Ok(())
}

/// A listening address: `ADDR:PORT`, `[V6]:PORT`, or `ADDR` (port 3260).
pub fn parse_portal(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("invalid portal '{s}': port 0"));
        }
        return Ok(a);
    }
    let host = s.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_PORT));
    }
    Err(format!(
        "invalid portal '{s}': expected IP:PORT, [IPv6]:PORT or IP"
    ))
}

/// Everything the server needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub portals: Vec<SocketAddr>,
    pub targets: Vec<TargetConfig>,
    /// CHAP accounts not bound to any target (tgtadm's `--mode account`).
    pub accounts: Vec<Credential>,
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        let mut tids = std::collections::BTreeSet::new();
        for t in &self.targets {
            t.validate()?;
            if !names.insert(t.name.to_ascii_lowercase()) {
                return Err(format!("target {} defined twice", t.name));
            }
            if let Some(tid) = t.tid {
                if !tids.insert(tid) {
                    return Err(format!("target {}: tid {tid} used twice", t.name));
                }
            }
        }
        // One secret per account name, wherever it appears.
        let mut secrets: std::collections::BTreeMap<&str, &[u8]> = Default::default();
        let all = self.accounts.iter().chain(
            self.targets
                .iter()
                .flat_map(|t| t.chap.iter().chain(t.mutual_chap.iter())),
        );
        for c in all {
            if let Some(s) = secrets.insert(&c.user, &c.secret) {
                if s != c.secret.as_slice() {
                    return Err(format!(
                        "CHAP account '{}' is given two different secrets",
                        c.user
                    ));
                }
            }
        }
        if self.portals.is_empty() {
            return Err("no portals".into());
        }
        Ok(())
    }
}

// ---- TOML file --------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    portals: Vec<String>,
    #[serde(default)]
    accounts: Vec<String>,
    #[serde(default)]
    target: Vec<FileTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTarget {
    name: String,
    tid: Option<u32>,
    alias: Option<String>,
    #[serde(default)]
    lun: Vec<FileLun>,
    #[serde(default)]
    chap: Vec<String>,
    mutual_chap: Option<String>,
    #[serde(default)]
    initiators: Vec<String>,
    #[serde(default)]
    initiator_addresses: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLun {
    id: u64,
    backing: String,
    #[serde(default)]
    read_only: bool,
}

/// Portals, targets and accounts from a config file.
pub fn load_file(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse_file(&text).map_err(|e| format!("config file {}: {e}", path.display()))
}

pub fn parse_file(text: &str) -> Result<Config, String> {
    let f: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    let portals = f
        .portals
        .iter()
        .map(|p| parse_portal(p))
        .collect::<Result<Vec<_>, _>>()?;
    let accounts = f
        .accounts
        .iter()
        .map(|c| c.parse())
        .collect::<Result<Vec<Credential>, _>>()
        .map_err(|e| format!("accounts: {e}"))?;
    let mut targets = Vec::new();
    for t in f.target {
        validate_iscsi_name(&t.name)?;
        let mut luns = Vec::new();
        for l in t.lun {
            let id =
                parse_lun_id(&l.id.to_string()).map_err(|e| format!("target {}: {e}", t.name))?;
            let backing = l
                .backing
                .parse()
                .map_err(|e| format!("target {} LUN {id}: {e}", t.name))?;
            luns.push(LunConfig {
                id,
                backing,
                read_only: l.read_only,
            });
        }
        let chap = t
            .chap
            .iter()
            .map(|c| c.parse())
            .collect::<Result<Vec<Credential>, _>>()
            .map_err(|e| format!("target {}: {e}", t.name))?;
        let mutual_chap = t
            .mutual_chap
            .map(|c| c.parse())
            .transpose()
            .map_err(|e| format!("target {}: mutual_chap: {e}", t.name))?;
        targets.push(TargetConfig {
            name: t.name.to_ascii_lowercase(),
            tid: t.tid,
            alias: t.alias,
            luns,
            chap,
            mutual_chap,
            initiators: t.initiators,
            addresses: t.initiator_addresses,
        });
    }
    Ok(Config {
        portals,
        targets,
        accounts,
    })
}

/// A TOML string literal (basic string, escaped).
fn toml_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn toml_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = items.map(toml_str).collect();
    format!("[{}]", v.join(", "))
}

fn cred_str(c: &Credential) -> String {
    format!("{}:{}", c.user, String::from_utf8_lossy(&c.secret))
}

impl Config {
    /// The config file that describes this state (what `parse_file` reads).
    pub fn to_toml(&self) -> String {
        let mut o = String::new();
        let portals: Vec<String> = self.portals.iter().map(|p| p.to_string()).collect();
        o.push_str(&format!(
            "portals = {}\n",
            toml_list(portals.iter().map(|s| s.as_str()))
        ));
        if !self.accounts.is_empty() {
            let a: Vec<String> = self.accounts.iter().map(cred_str).collect();
            o.push_str(&format!(
                "accounts = {}\n",
                toml_list(a.iter().map(|s| s.as_str()))
            ));
        }
        for t in &self.targets {
            o.push_str(&format!("\n[[target]]\nname = {}\n", toml_str(&t.name)));
            if let Some(tid) = t.tid {
                o.push_str(&format!("tid = {tid}\n"));
            }
            if let Some(a) = &t.alias {
                o.push_str(&format!("alias = {}\n", toml_str(a)));
            }
            if !t.chap.is_empty() {
                let c: Vec<String> = t.chap.iter().map(cred_str).collect();
                o.push_str(&format!(
                    "chap = {}\n",
                    toml_list(c.iter().map(|s| s.as_str()))
                ));
            }
            if let Some(m) = &t.mutual_chap {
                o.push_str(&format!("mutual_chap = {}\n", toml_str(&cred_str(m))));
            }
            if !t.initiators.is_empty() {
                o.push_str(&format!(
                    "initiators = {}\n",
                    toml_list(t.initiators.iter().map(|s| s.as_str()))
                ));
            }
            if !t.addresses.is_empty() {
                o.push_str(&format!(
                    "initiator_addresses = {}\n",
                    toml_list(t.addresses.iter().map(|s| s.as_str()))
                ));
            }
            for l in &t.luns {
                o.push_str(&format!(
                    "[[target.lun]]\nid = {}\nbacking = {}\n",
                    l.id,
                    toml_str(&l.backing.to_string())
                ));
                if l.read_only {
                    o.push_str("read_only = true\n");
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_strings() {
        assert_eq!(
            "tcp:127.0.0.1:7000:vol".parse::<Backing>().unwrap(),
            Backing::Sheep {
                addr: SheepAddr::tcp("127.0.0.1", 7000),
                vdi: "vol".into(),
                snap: SnapSel::Working
            }
        );
        assert_eq!(
            "unix:/s/sock:vol:snap1".parse::<Backing>().unwrap(),
            Backing::Sheep {
                addr: SheepAddr::Unix("/s/sock".into()),
                vdi: "vol".into(),
                snap: SnapSel::Tag("snap1".into())
            }
        );
        assert_eq!(
            "tcp:h:1:v:3".parse::<Backing>().unwrap(),
            Backing::Sheep {
                addr: SheepAddr::tcp("h", 1),
                vdi: "v".into(),
                snap: SnapSel::Id(3)
            }
        );
        assert_eq!(
            "mem:1M".parse::<Backing>().unwrap(),
            Backing::Memory { size: 1 << 20 }
        );
        for bad in [
            "",
            "tcp:h:1",
            "tcp::1:v",
            "tcp:h:0:v",
            "tcp:h:x:v",
            "tcp:h:70000:v",
            "tcp:h:1:",
            "tcp:h:1:v:",
            "tcp:h:1:v:0",
            "tcp:h:1:v:t:extra",
            "unix::v",
            "unix:/p",
            "nbd:x:y",
            "mem:0",
            "mem:100",
        ] {
            let e = bad.parse::<Backing>().unwrap_err();
            assert!(e.contains(bad) || bad.is_empty(), "{bad}: {e}");
        }
        for s in ["tcp:h:1:v", "unix:/a/b:v:tag", "tcp:h:2:v:7"] {
            assert_eq!(s.parse::<Backing>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn lun_option() {
        let l: LunConfig = "1=tcp:h:7000:v".parse().unwrap();
        assert_eq!(l.id, 1);
        assert!("x=tcp:h:7000:v".parse::<LunConfig>().is_err());
        assert!("16384=tcp:h:7000:v".parse::<LunConfig>().is_err());
        let e = "2=tcp:h:7000".parse::<LunConfig>().unwrap_err();
        assert!(e.starts_with("LUN 2:"), "{e}");
    }

    #[test]
    fn credentials() {
        let c: Credential = "u:s:x".parse().unwrap();
        assert_eq!(c.user, "u");
        assert_eq!(c.secret, b"s:x");
        assert!(":s".parse::<Credential>().is_err());
        assert!("u:".parse::<Credential>().is_err());
        assert!("u".parse::<Credential>().is_err());
        assert!(!format!("{c:?}").contains("s:x"));
    }

    #[test]
    fn portals() {
        assert_eq!(
            parse_portal("127.0.0.1:3261").unwrap(),
            "127.0.0.1:3261".parse().unwrap()
        );
        assert_eq!(
            parse_portal("0.0.0.0").unwrap(),
            "0.0.0.0:3260".parse().unwrap()
        );
        assert_eq!(
            parse_portal("[::1]").unwrap(),
            "[::1]:3260".parse().unwrap()
        );
        assert!(parse_portal("host:1").is_err());
        assert!(parse_portal("1.2.3.4:0").is_err());
    }

    #[test]
    fn acls() {
        let mut t = TargetConfig {
            name: "iqn.2024-01.x:t".into(),
            ..Default::default()
        };
        assert!(t.is_open() && t.allows("iqn.a", None));
        t.addresses = vec!["10.1.0.0/16".into(), "::1".into()];
        assert!(!t.is_open());
        assert!(t.allows("iqn.a", Some("10.1.2.3".parse().unwrap())));
        assert!(t.allows("iqn.a", Some("::ffff:10.1.2.3".parse().unwrap())));
        assert!(t.allows("iqn.a", Some("::1".parse().unwrap())));
        assert!(!t.allows("iqn.a", Some("10.2.0.1".parse().unwrap())));
        assert!(!t.allows("iqn.a", None));
        t.initiators = vec!["iqn.a".into()];
        assert!(t.allows("IQN.A", Some("10.2.0.1".parse().unwrap())));
        t.addresses = vec!["ALL".into()];
        t.initiators.clear();
        assert!(t.is_open() && t.allows("iqn.b", None));
        for bad in ["10.0.0.0/33", "host", "1.2.3.4/x", ""] {
            assert!(parse_acl_address(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_acl_address("0.0.0.0/0").map(|_| ()), Ok(()));
        assert!(in_net(
            "1.2.3.4".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
    }

    #[test]
    fn names() {
        assert!(validate_iscsi_name("iqn.2024-01.org.example:t1").is_ok());
        assert!(validate_iscsi_name("eui.0123456789abcdef").is_ok());
        assert!(validate_iscsi_name("target1").is_err());
        assert!(validate_iscsi_name("iqn.a b").is_err());
    }

    #[test]
    fn toml_file() {
        let text = r#"
portals = ["127.0.0.1:3261", "[::1]:3262"]
[[target]]
name = "iqn.2024-01.org.example:A"
chap = ["user:secret123"]
mutual_chap = "tgt:secret456"
initiators = ["iqn.1993-08.org.debian:01:abc"]
[[target.lun]]
id = 0
backing = "tcp:127.0.0.1:7000:a"
[[target.lun]]
id = 1
backing = "unix:/tmp/sock:a:snap"
[[target]]
name = "iqn.2024-01.org.example:b"
[[target.lun]]
id = 3
backing = "tcp:127.0.0.1:7000:b"
read_only = true
"#;
        let cfg = parse_file(text).unwrap();
        // The dump of a state reads back as the same state.
        assert_eq!(parse_file(&cfg.to_toml()).unwrap(), cfg);
        let (portals, targets) = (cfg.portals, cfg.targets);
        assert_eq!(portals.len(), 2);
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[0].name, "iqn.2024-01.org.example:a");
        assert_eq!(targets[0].luns.len(), 2);
        assert!(targets[0].luns[1].backing.is_snapshot());
        assert_eq!(targets[0].chap[0].user, "user");
        assert!(targets[0].allows("IQN.1993-08.org.debian:01:abc", None));
        assert!(!targets[0].allows("iqn.other", None));
        assert!(targets[1].allows("anyone", None));
        assert!(targets[1].luns[0].read_only);
        let e = parse_file(
            "[[target]]\nname = \"iqn.x\"\n[[target.lun]]\nid = 1\nbacking = \"tcp:h\"\n",
        )
        .unwrap_err();
        assert!(e.contains("LUN 1") && e.contains("tcp:h"), "{e}");
        assert!(parse_file("bogus = 1\n").is_err());
    }
}
