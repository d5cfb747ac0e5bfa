//! scripts/install into a temp prefix: the installed binaries run, the
//! systemd units verify, completions load; then `mount -t sheepfs` and an
//! fstab line (`mount -a -T FILE`) through the installed mount.sheepfs, with
//! options and attach at mount time; then --uninstall removes it all.

mod common;
mod sheepfs_common;

use common::{bin, SheepLite};
use sheepfs_common::{is_mounted, require_root, sh, sh_ok, tool, unmount};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn install(prefix: &Path, extra: &[&str], helper_dir: &str) -> (bool, String) {
    let bin_dir = bin("sheepfs").parent().unwrap().to_path_buf();
    let o = Command::new(repo().join("scripts/install"))
        .args(extra)
        .arg(prefix)
        .env("BIN_DIR", &bin_dir)
        .env("MOUNT_HELPER_DIR", helper_dir)
        .output()
        .expect("run scripts/install");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Every file below `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_verify_and_uninstall() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("pfx");
    let (ok, out) = install(&prefix, &[], "");
    assert!(ok, "install failed:\n{out}");
    let f = files(&prefix);
    for want in [
        "bin/sheepfs",
        "bin/sheepctl",
        "bin/sheep-lite",
        "bin/sheep-iscsi",
        "sbin/mount.sheepfs",
        "sbin/mount.fuse.sheepfs",
        "share/man/man8/sheepfs.8",
        "share/man/man8/mount.sheepfs.8",
        "share/man/man8/sheepctl.8",
        "share/man/man8/sheep-lite.8",
        "share/man/man8/sheep-iscsi.8",
        "lib/systemd/system/sheep-lite@.service",
        "lib/systemd/system/sheepfs@.service",
        "lib/systemd/system/sheep-iscsi.service",
        "share/bash-completion/completions/sheepctl",
        "share/bash-completion/completions/sheepfs",
        "share/bash-completion/completions/sheep-lite",
    ] {
        assert!(f.contains(&want.to_string()), "{want} not installed: {f:?}");
    }
    // The installed programs run, and the helper link reaches sheepfs.
    let v = sh_ok(
        &prefix.join("bin/sheepctl").to_string_lossy(),
        &["--version"],
    );
    assert!(v.contains("0."), "{v}");
    let (ok, _, err) = sh(
        &prefix.join("sbin/mount.sheepfs").to_string_lossy(),
        &["-f", "127.0.0.1:7000", "/mnt", "-o", "cache,ro,attach=a:b"],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("sheepfs -a 127.0.0.1 -p 7000 -k --read-only --attach a --attach b /mnt"),
        "{err}"
    );
    let (ok, _, err) = sh(
        &prefix.join("sbin/mount.sheepfs").to_string_lossy(),
        &["2", "/mnt"],
    );
    assert!(!ok && err.contains("bare number"), "{err}");

    // Units name the installed binaries and pass systemd's own checks.
    let units = prefix.join("lib/systemd/system");
    let unit = std::fs::read_to_string(units.join("sheepfs@.service")).unwrap();
    assert!(unit.contains(&format!("ExecStart={}/bin/sheepfs -f", prefix.display())));
    assert!(unit.contains("Type=notify"));
    let iscsi = std::fs::read_to_string(units.join("sheep-iscsi.service")).unwrap();
    assert!(iscsi.contains("--config") && iscsi.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let analyze = tool("systemd-analyze", "apt-get install systemd");
    let verify: Vec<String> = [
        "sheep-lite@var-lib-sheep.service",
        "sheepfs@mnt-sheep.service",
        "sheep-iscsi.service",
    ]
    .iter()
    .map(|u| {
        // An instance of a template verifies the template.
        let t = u
            .split_once('@')
            .map_or(u.to_string(), |(a, _)| format!("{a}@.service"));
        let inst = units.join(u);
        if !inst.exists() {
            std::fs::copy(units.join(&t), &inst).unwrap();
        }
        inst.to_string_lossy().into_owned()
    })
    .collect();
    let mut args = vec!["verify", "--man=no"];
    args.extend(verify.iter().map(String::as_str));
    let o = Command::new(&analyze).args(&args).output().unwrap();
    assert!(
        o.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    for i in &verify {
        std::fs::remove_file(i).unwrap();
    }

    // Completions load into bash and register.
    let comp = prefix.join("share/bash-completion/completions");
    for (file, cmd) in [
        ("sheepctl", "sheepctl"),
        ("sheepfs", "sheepfs"),
        ("sheep-lite", "sheep-lite"),
    ] {
        let script = format!("source {} && complete -p {cmd}", comp.join(file).display());
        let out = sh_ok("bash", &["-c", &script]);
        assert!(out.contains(cmd), "{file}: {out}");
    }
    // The sheepctl completion knows dog's grammar (from sheepctl's help).
    let script = format!(
        "PATH={}:$PATH; source {}; COMP_WORDS=(sheepctl vdi cr); COMP_CWORD=2; _sheepctl; echo ${{COMPREPLY[@]}}; \
         COMP_WORDS=(sheepctl cluster format -); COMP_CWORD=3; _sheepctl; echo ${{COMPREPLY[@]}}",
        prefix.join("bin").display(),
        comp.join("sheepctl").display()
    );
    let out = sh_ok("bash", &["-c", &script]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("create"), "{out}");
    assert!(lines.next().unwrap_or("").contains("--lock"), "{out}");

    let (ok, out) = install(&prefix, &["--uninstall"], "");
    assert!(ok, "uninstall failed:\n{out}");
    assert_eq!(files(&prefix), Vec::<String>::new(), "left behind");
}

/// `mount -t sheepfs` and `mount -a -T FSTAB` through the installed helper.
/// mount(8) finds helpers in /sbin only: the install links
/// /sbin/mount.sheepfs there, and the uninstall removes it.
#[test]
fn mount_helper_and_fstab() {
    require_root();
    let s = SheepLite::start();
    s.ctl(&["cluster", "format", "-l"]).assert_ok();
    s.ctl(&["vdi", "create", "v1", "64M"]).assert_ok();
    s.ctl(&["vdi", "create", "v2", "64M"]).assert_ok();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("pfx");
    let (ok, out) = install(&prefix, &[], "/sbin");
    assert!(ok, "install failed:\n{out}");
    let _uninstall = Uninstall(prefix.clone());
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.to_string_lossy().into_owned();
    let spec = format!("127.0.0.1:{}", s.port);

    // mount -t sheepfs with options; attach at mount time.
    let (ok, o, e) = sh(
        "mount",
        &[
            "-t",
            "sheepfs",
            &spec,
            &m,
            "-o",
            "cache,timeout=5,attach=v1:v2",
        ],
    );
    assert!(ok, "mount -t sheepfs: {o}{e}");
    assert!(is_mounted(&mnt));
    let line = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m.as_str()))
        .map(str::to_string)
        .unwrap();
    assert!(
        line.starts_with(&format!("{spec} {m} fuse.sheepfs ")),
        "{line}"
    );
    let stats = std::fs::read_to_string(mnt.join("stats/v1")).unwrap();
    assert!(
        stats.contains("page_cache: 1\n") && stats.contains("locking: on\n"),
        "{stats}"
    );
    assert!(mnt.join("volume/v2").exists());
    let locks = s.ctl(&["vdi", "lock", "list"]).text();
    assert!(locks.contains("v1") && locks.contains("v2"), "{locks}");
    // An unknown option is refused, naming it.
    let mnt2 = tmp.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let (ok, o, e) = sh(
        "mount",
        &[
            "-t",
            "sheepfs",
            &spec,
            &mnt2.to_string_lossy(),
            "-o",
            "bogus",
        ],
    );
    assert!(
        !ok && format!("{o}{e}").contains("unknown mount option 'bogus'"),
        "{o}{e}"
    );
    sh_ok("umount", &[&m]);
    wait_unmounted(&mnt);
    wait_for(
        || !s.ctl(&["vdi", "lock", "list"]).text().contains("v1"),
        "locks released",
    );

    // An fstab line as an operator writes it.
    let fstab = tmp.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("# test\n{spec} {m} sheepfs defaults,_netdev,ro,attach=v2 0 0\n"),
    )
    .unwrap();
    let (ok, o, e) = sh("mount", &["-a", "-T", &fstab.to_string_lossy()]);
    assert!(ok, "mount -a -T: {o}{e}");
    assert!(is_mounted(&mnt));
    let stats = std::fs::read_to_string(mnt.join("stats/v2")).unwrap();
    assert!(stats.contains("read_only: 1\n"), "{stats}");
    assert!(!mnt.join("volume/v1").exists());
    sh_ok("umount", &[&m]);
    wait_unmounted(&mnt);
}

struct Uninstall(PathBuf);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let (ok, out) = install(&self.0, &["--uninstall"], "/sbin");
        if !std::thread::panicking() {
            assert!(ok, "{out}");
            assert!(
                !Path::new("/sbin/mount.sheepfs").exists(),
                "helper link left"
            );
        }
    }
}

fn wait_unmounted(p: &Path) {
    wait_for(|| !is_mounted(p), "unmounted");
    // The daemon exits once its session ends; nothing to reap (it is not
    // our child), but the mount must not come back.
    unmount(p);
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
