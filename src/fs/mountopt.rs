//! `mount -t sheepfs SPEC DIR -o OPTIONS` (and /etc/fstab lines): the
//! `mount.sheepfs` helper (sheepfs called by that name, a symlink) turns
//! them into a sheepfs command line.
//!
//! SPEC is `HOST:PORT`, `HOST` (port 7000), `[V6]:PORT` or `unix:PATH`.
//! Options (comma-separated):
//!
//! | option              | sheepfs flag        |
//! |---------------------|---------------------|
//! | `ro`                | `--read-only`       |
//! | `pagecache`, `cache`| `-k`                |
//! | `objectcache`       | `-o`                |
//! | `cache_size=SIZE`   | `--cache-size SIZE` |
//! | `timeout=SECONDS`   | `-t SECONDS`        |
//! | `socket=PATH`       | `--socket PATH`     |
//! | `allow_other`       | `--allow-other`     |
//! | `attach=A[:B...]`   | `--attach A ...`    |
//! | `fuse_threads=N`    | `--fuse-threads N`  |
//!
//! Options that mount(8), systemd or the kernel use and that mean nothing
//! to sheepfs (`defaults`, `rw`, `_netdev`, `nofail`, `auto`, `noauto`,
//! `user`, `users`, `nouser`, `owner`, `group`, `nodev`, `nosuid`, `noexec`,
//! the atime family, `x-*`, `comment=*`) are accepted and ignored; anything
//! else is an error, so a typo is not silently dropped.

use crate::client::SheepAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// Options accepted and ignored (mount(8), fstab, systemd and kernel
/// generic options; sheepfs is always mounted nodev,nosuid).
const IGNORED: &[&str] = &[
    "defaults",
    "rw",
    "_netdev",
    "nofail",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "diratime",
    "nodiratime",
    "async",
    "loud",
    "silent",
];

/// Checks SPEC and returns the sheepfs arguments for it (`-a HOST -p PORT`
/// or `--socket PATH`).
pub(crate) fn spec_args(spec: &str) -> Result<Vec<String>, String> {
    let addr: SheepAddr = spec
        .parse()
        .map_err(|e| format!("bad sheep address '{spec}': {e} (expected HOST:PORT)"))?;
    match addr {
        SheepAddr::Tcp { host, port } => {
            crate::util::check_host(&host)?;
            Ok(vec!["-a".into(), host, "-p".into(), port.to_string()])
        }
        SheepAddr::Unix(p) => Ok(vec!["--socket".into(), p.to_string_lossy().into_owned()]),
    }
}

/// Translates a comma-separated option list into sheepfs arguments.
pub(crate) fn option_args(opts: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (key, val) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o, None),
        };
        let need = |what: &str| {
            val.filter(|v| !v.is_empty())
                .ok_or_else(|| format!("mount option '{key}' needs a value: {key}={what}"))
        };
        match key {
            "ro" => out.push("--read-only".into()),
            "pagecache" | "cache" => out.push("-k".into()),
            "objectcache" => out.push("-o".into()),
            "allow_other" => out.push("--allow-other".into()),
            "cache_size" => out.extend(["--cache-size".into(), need("SIZE")?.into()]),
            "timeout" => out.extend(["-t".into(), need("SECONDS")?.into()]),
            "socket" => out.extend(["--socket".into(), need("PATH")?.into()]),
            "fuse_threads" => out.extend(["--fuse-threads".into(), need("N")?.into()]),
            "attach" => {
                for v in need("VDI[:VDI...]")?.split(':').filter(|v| !v.is_empty()) {
                    out.extend(["--attach".into(), v.into()]);
                }
            }
            k if val.is_none() && IGNORED.contains(&k) => {}
            k if k.starts_with("x-") || k == "comment" => {}
            _ => {
                return Err(format!(
                    "unknown mount option '{o}' (see mount.sheepfs(8) for the options)"
                ))
            }
        }
    }
    Ok(out)
}

/// The whole sheepfs argument list for `mount.sheepfs SPEC DIR -o OPTS`.
/// `socket=` replaces the address of SPEC (which then only names the
/// mount).
pub(crate) fn sheepfs_args(spec: &str, dir: &str, opts: &str) -> Result<Vec<String>, String> {
    let o = option_args(opts)?;
    let mut args = if o.iter().any(|a| a == "--socket") {
        Vec::new()
    } else {
        spec_args(spec)?
    };
    args.extend(o);
    args.push(dir.to_string());
    Ok(args)
}

/// Usage of the helper.
pub const USAGE: &str = "usage: mount.sheepfs HOST:PORT|unix:PATH DIR [-sfnv] [-o OPTIONS]\n\
     options: ro, pagecache (or cache), objectcache, cache_size=SIZE, timeout=SECONDS, \
     socket=PATH, allow_other, attach=VDI[:VDI...], fuse_threads=N; see sheepfs(8)";

/// Is a program called by this name (`argv[0]`) the mount helper
/// (`mount.sheepfs`, `mount.fuse.sheepfs`)?
pub fn is_helper_name(argv0: &str) -> bool {
    let base = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    base.starts_with("mount.")
}

/// The helper: `mount.sheepfs SPEC DIR [-sfnv] [-o OPTS]` as mount(8)
/// calls it. Checks everything, then runs `sheepfs` (`exe`) with the
/// translated arguments in its place; sheepfs returns once the mount is up
/// or says why not. Returns the exit code when it does not exec.
pub fn helper_main(exe: &Path, argv: &[String]) -> i32 {
    let mut pos = Vec::new();
    let mut opts = Vec::new();
    let (mut fake, mut verbose) = (false, false);
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-o" => match it.next() {
                Some(o) => opts.push(o.clone()),
                None => return helper_fail("-o needs OPTIONS"),
            },
            // The type and namespace mean nothing here.
            "-t" | "-N" => {
                it.next();
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return 0;
            }
            s if s.starts_with("-o") && s.len() > 2 => opts.push(s[2..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => {
                for c in s[1..].chars() {
                    match c {
                        'f' => fake = true,
                        'v' => verbose = true,
                        // sloppy, no mtab, read-only/read-write as -o says
                        's' | 'n' | 'r' | 'w' => {}
                        _ => return helper_fail(&format!("unknown flag -{c}\n{USAGE}")),
                    }
                }
            }
            _ => pos.push(a.clone()),
        }
    }
    let [spec, dir] = match <[String; 2]>::try_from(pos) {
        Ok(p) => p,
        Err(_) => return helper_fail(USAGE),
    };
    // mount.fuse's `sheepfs#SPEC` form.
    let spec = spec.strip_prefix("sheepfs#").unwrap_or(&spec);
    let args = match sheepfs_args(spec, &dir, &opts.join(",")) {
        Ok(a) => a,
        Err(e) => return helper_fail(&e),
    };
    if verbose || fake {
        eprintln!("mount.sheepfs: sheepfs {}", args.join(" "));
    }
    if fake {
        return 0;
    }
    let e = std::process::Command::new(exe)
        .arg0("sheepfs")
        .args(&args)
        .exec();
    helper_fail(&format!("cannot run {}: {e}", exe.display()))
}

fn helper_fail(msg: &str) -> i32 {
    eprintln!("mount.sheepfs: {msg}");
    // mount(8)'s "mount failure".
    32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fstab_line() {
        assert_eq!(
            sheepfs_args("127.0.0.1:7000", "/mnt/sheep", "defaults,_netdev,cache").unwrap(),
            v(&["-a", "127.0.0.1", "-p", "7000", "-k", "/mnt/sheep"])
        );
        assert_eq!(
            sheepfs_args(
                "h:7001",
                "/m",
                "ro,objectcache,cache_size=64M,timeout=5,allow_other,attach=a:b@s1,nofail,x-systemd.automount"
            )
            .unwrap(),
            v(&[
                "-a",
                "h",
                "-p",
                "7001",
                "--read-only",
                "-o",
                "--cache-size",
                "64M",
                "-t",
                "5",
                "--allow-other",
                "--attach",
                "a",
                "--attach",
                "b@s1",
                "/m"
            ])
        );
        assert_eq!(
            sheepfs_args("sheep", "/m", "socket=/var/lib/sheep/sock").unwrap(),
            v(&["--socket", "/var/lib/sheep/sock", "/m"])
        );
        assert_eq!(
            sheepfs_args("unix:/s", "/m", "").unwrap(),
            v(&["--socket", "/s", "/m"])
        );
    }

    #[test]
    fn helper_names() {
        assert!(is_helper_name("/sbin/mount.sheepfs"));
        assert!(is_helper_name("mount.fuse.sheepfs"));
        assert!(!is_helper_name("/usr/bin/sheepfs"));
    }

    #[test]
    fn refusals() {
        assert!(sheepfs_args("2", "/m", "")
            .unwrap_err()
            .contains("bare number"));
        assert!(sheepfs_args("h:0", "/m", "").is_err());
        assert!(option_args("bogus").unwrap_err().contains("'bogus'"));
        assert!(option_args("timeout")
            .unwrap_err()
            .contains("timeout=SECONDS"));
        assert!(option_args("cache_size=").is_err());
        // An ignored name with a value is not what mount means: refuse.
        assert!(option_args("defaults=1").is_err());
    }
}
