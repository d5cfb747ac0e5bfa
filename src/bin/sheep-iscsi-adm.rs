//! sheep-iscsi-adm: changes and shows a running sheep-iscsi through its
//! control socket, with tgtadm's grammar, messages and exit codes (so the
//! steps of tgt's README.sheepdog run with `tgtadm` replaced by this
//! command). See sheep-iscsi-adm(8).

use sheepfs::iscsi::admin::{AdmErr, Request};
use sheepfs::iscsi::control;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const PROG: &str = "sheep-iscsi-adm";
const EINVAL: u8 = 22;

const USAGE: &str = "Usage: sheep-iscsi-adm [OPTION]
--lld iscsi --mode target --op new --tid <id> --targetname <name>
\tadd a new target with <id> and <name>. <id> must not be zero.
--lld iscsi --mode target --op delete [--force] --tid <id>
\tdelete the target; with --force even if initiators are logged in.
--lld iscsi --mode target --op show [--tid <id>] [--json | --dump]
\tshow the targets (with LUN counters); --json as JSON, --dump as a
\tconfig file for --config.
--lld iscsi --mode target --op update --tid <id> --name TargetAlias --value <alias>
--lld iscsi --mode target --op bind|unbind --tid <id> --initiator-address <ALL|IP[/PREFIX]>
--lld iscsi --mode target --op bind|unbind --tid <id> --initiator-name <iqn>
\tallow or stop allowing initiators (applies to new logins).
--lld iscsi --mode logicalunit --op new --tid <id> --lun <lun>
  --backing-store <tcp:HOST:PORT:VDI|unix:PATH:VDI>[:TAG|:SNAPID] [--bstype sheepdog]
  [--params readonly=1]
\tadd a LUN; logged-in initiators are told (unit attention).
--lld iscsi --mode logicalunit --op delete [--force] --tid <id> --lun <lun>
\tdelete a LUN; with --force even if initiators are logged in.
--lld iscsi --mode logicalunit --op update --tid <id> --lun <lun> --params readonly=0|1
--lld iscsi --mode account --op new --user <name> --password <pass>
--lld iscsi --mode account --op delete --user <name>
--lld iscsi --mode account --op bind|unbind --tid <id> --user <name> [--outgoing]
--lld iscsi --mode account --op show
--lld iscsi --mode conn --op show --tid <id> [--sid <sid>]
--lld iscsi --mode conn --op delete --tid <id> --sid <sid> [--cid <cid>]
--lld iscsi --mode system --op show
--lld iscsi --mode system --op delete [--force]
\tstop sheep-iscsi cleanly.
--control <path>   the control socket (default /run/sheep-iscsi.sock)
--help             display this help and exit
";

fn die(msg: &str, code: u8) -> ExitCode {
    eprintln!("{PROG}: {msg}");
    ExitCode::from(code)
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("{PROG}: {msg}");
    eprintln!("Try `{PROG} --help' for more information.");
    ExitCode::from(EINVAL)
}

/// The options tgtadm knows, by their short letter (tgtadm checks which
/// letters each mode and operation allows).
const OPTIONS: &[(&str, char, bool)] = &[
    ("lld", 'L', true),
    ("op", 'o', true),
    ("mode", 'm', true),
    ("tid", 't', true),
    ("sid", 's', true),
    ("cid", 'c', true),
    ("lun", 'l', true),
    ("name", 'n', true),
    ("value", 'v', true),
    ("backing-store", 'b', true),
    ("bstype", 'E', true),
    ("bsopts", 'S', true),
    ("bsoflags", 'f', true),
    ("blocksize", 'y', true),
    ("targetname", 'T', true),
    ("initiator-address", 'I', true),
    ("initiator-name", 'Q', true),
    ("user", 'u', true),
    ("password", 'p', true),
    ("host", 'H', true),
    ("force", 'F', false),
    ("params", 'P', true),
    ("bus", 'B', true),
    ("device-type", 'Y', true),
    ("outgoing", 'O', false),
    ("control-port", 'C', true),
    ("debug", 'd', false),
    ("help", 'h', false),
    ("version", 'V', false),
    // Ours (no short form).
    ("control", '\0', true),
    ("json", '\0', false),
    ("dump", '\0', false),
];

struct Parsed {
    /// (letter or long name, value) in command-line order.
    opts: Vec<(char, &'static str, Option<String>)>,
}

impl Parsed {
    fn get(&self, long: &str) -> Option<&str> {
        self.opts
            .iter()
            .rev()
            .find(|(_, l, _)| *l == long)
            .and_then(|(_, _, v)| v.as_deref())
    }
    fn has(&self, long: &str) -> bool {
        self.opts.iter().any(|(_, l, _)| *l == long)
    }
    /// The first tgtadm letter not in `allowed` (our own options pass).
    fn disallowed(&self, allowed: &str) -> Option<char> {
        self.opts
            .iter()
            .map(|(c, _, _)| *c)
            .find(|c| *c != '\0' && *c != 'd' && !allowed.contains(*c))
    }
}

fn parse(args: &[String]) -> Result<Parsed, ExitCode> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        let (spec, inline) = if let Some(long) = a.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            match OPTIONS.iter().find(|(l, _, _)| *l == name) {
                Some(s) => (s, inline),
                None => return Err(usage_error(&format!("unrecognized option '{a}'"))),
            }
        } else if let Some(short) = a.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut cs = short.chars();
            let c = cs.next().unwrap_or('?');
            let rest: String = cs.collect();
            match OPTIONS.iter().find(|(_, s, _)| *s == c && c != '\0') {
                Some(s) => (s, (!rest.is_empty()).then_some(rest)),
                None => return Err(usage_error(&format!("invalid option -- '{c}'"))),
            }
        } else {
            return Err(usage_error(&format!("unrecognized option '{a}'")));
        };
        let (long, letter, takes) = *spec;
        let value = if takes {
            match inline {
                Some(v) => Some(v),
                None if i < args.len() => {
                    i += 1;
                    Some(args[i - 1].clone())
                }
                None => {
                    return Err(usage_error(&format!(
                        "option '--{long}' requires an argument"
                    )))
                }
            }
        } else if inline.is_some() {
            return Err(usage_error(&format!(
                "option '--{long}' doesn't allow an argument"
            )));
        } else {
            None
        };
        opts.push((letter, long, value));
    }
    Ok(Parsed { opts })
}

fn number<T: std::str::FromStr>(
    p: &Parsed,
    long: &str,
    letter: char,
) -> Result<Option<T>, ExitCode> {
    match p.get(long) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            eprintln!("-{letter} argument value '{v}' invalid");
            usage_error("invalid argument")
        }),
    }
}

/// tgtadm's checks of which options each mode and operation takes.
fn check(p: &Parsed, mode: &str, op: &str, tid: Option<i64>) -> Result<(), ExitCode> {
    let allowed = |set: &str, what: &str| -> Result<(), ExitCode> {
        match p.disallowed(set) {
            Some(c) => Err(die(
                &format!("{what} mode: option '-{c}' is not allowed/supported"),
                EINVAL,
            )),
            None => Ok(()),
        }
    };
    let unsupported = || {
        Err(die(
            &format!("operation {op} not supported in {mode} mode"),
            EINVAL,
        ))
    };
    let need_tid = |must_not_be_zero: &str| -> Result<(), ExitCode> {
        match tid {
            Some(0) => Err(die(must_not_be_zero, EINVAL)),
            None => Err(die("'tid' option is necessary", EINVAL)),
            Some(_) => Ok(()),
        }
    };
    match mode {
        "system" => match op {
            "show" | "delete" => Ok(()),
            "update" => {
                allowed("LmonvC", "system")?;
                Ok(())
            }
            _ => unsupported(),
        },
        "target" => {
            if op != "show" {
                need_tid("'tid' cannot be 0")?;
            }
            match op {
                "new" => {
                    allowed("LmotTC", "target")?;
                    if !p.has("targetname") {
                        return Err(die(
                            "creating new target requires a name, use --targetname",
                            EINVAL,
                        ));
                    }
                    Ok(())
                }
                "delete" => allowed("LmotCF", "target"),
                "show" => allowed("LmotC", "target"),
                "bind" | "unbind" => {
                    allowed("LmotIQBHC", "target")?;
                    if !p.has("initiator-address") && !p.has("initiator-name") {
                        return Err(die(
                            &format!(
                                "{op} operation requires initiator-address, initiator-name or bus"
                            ),
                            EINVAL,
                        ));
                    }
                    if p.has("bus") || p.has("host") {
                        return Err(die("iSCSI targets take no --bus or --host", EINVAL));
                    }
                    Ok(())
                }
                "update" => {
                    allowed("LmotnvC", "target")?;
                    if !p.has("name") || !p.has("value") {
                        return Err(die(
                            "update operation requires 'name' and 'value' options",
                            EINVAL,
                        ));
                    }
                    Ok(())
                }
                _ => unsupported(),
            }
        }
        "account" => match op {
            "new" => {
                allowed("LmoupfC", "account")?;
                if !p.has("user") || !p.has("password") {
                    return Err(die("'user' and 'password' options are required", EINVAL));
                }
                Ok(())
            }
            "show" => allowed("LmoC", "account"),
            "delete" | "bind" | "unbind" => {
                allowed(if op == "delete" { "LmouC" } else { "LmotuOC" }, "account")?;
                if !p.has("user") {
                    return Err(die("'user' option is necessary", EINVAL));
                }
                Ok(())
            }
            _ => unsupported(),
        },
        "logicalunit" => {
            need_tid("'tid' must not be 0")?;
            if !p.has("lun") {
                return Err(die("'lun' option is necessary", EINVAL));
            }
            match op {
                "new" => {
                    allowed("LmofytlbEYCSP", "logicalunit")?;
                    if !p.has("backing-store") {
                        return Err(die("'backing-store' option is necessary", EINVAL));
                    }
                    Ok(())
                }
                "delete" => allowed("LmotlCF", "logicalunit"),
                "update" => match p.disallowed("LmofytlPC") {
                    Some(c) => Err(die(
                        &format!("option '-{c}' not supported in logicalunit mode"),
                        EINVAL,
                    )),
                    None => Ok(()),
                },
                _ => unsupported(),
            }
        }
        "conn" => {
            need_tid("'tid' cannot be 0")?;
            match op {
                "show" => allowed("LmotsC", "conn"),
                "delete" => {
                    allowed("LmotscC", "conn")?;
                    if !p.has("sid") {
                        return Err(die("'sid' option is necessary", EINVAL));
                    }
                    Ok(())
                }
                _ => unsupported(),
            }
        }
        _ => Err(die(
            &format!("{mode} mode is not supported by sheep-iscsi"),
            EINVAL,
        )),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let p = match parse(&args) {
        Ok(p) => p,
        Err(c) => return c,
    };
    if p.has("help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if p.has("version") {
        println!("{}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(op) = p.get("op") else {
        return die("specify the operation type", EINVAL);
    };
    let ops = [
        "new", "delete", "bind", "unbind", "show", "update", "stat", "start", "stop",
    ];
    if !ops.contains(&op) {
        return die(&format!("unknown operation: {op}"), 1);
    }
    let Some(mode_arg) = p.get("mode") else {
        return die("specify the mode", EINVAL);
    };
    let mode = match mode_arg {
        "system" | "sys" => "system",
        "target" | "tgt" => "target",
        "logicalunit" | "lu" => "logicalunit",
        "connection" | "conn" => "conn",
        "account" => "account",
        "portal" | "pt" | "session" | "sess" | "lld" => mode_arg,
        other => return die(&format!("unknown mode: {other}"), 1),
    };
    if let Some(l) = p.get("lld") {
        if l != "iscsi" {
            return die(AdmErr::NoDriver.message(), EINVAL);
        }
    }
    let tid: Option<i64> = match number(&p, "tid", 't') {
        Ok(t) => t,
        Err(c) => return c,
    };
    if let Err(c) = check(&p, mode, op, tid) {
        return c;
    }
    if let Some(t) = p.get("device-type").filter(|t| *t != "disk") {
        return die(&format!("unknown target type: {t}"), EINVAL);
    }
    if let Some(b) = p.get("blocksize").filter(|b| *b != "512") {
        return die(
            &format!("block size {b} is not supported (only 512)"),
            EINVAL,
        );
    }
    if p.has("bsopts") || p.has("bsoflags") {
        return die(AdmErr::UnsupportedOperation.message(), EINVAL);
    }
    let req = match build_request(&p, mode, op, tid) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let path = PathBuf::from(p.get("control").unwrap_or(control::DEFAULT_PATH));
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return die(&format!("cannot start runtime: {e}"), 1),
    };
    // Deleting an active LUN waits (bounded) for its commands: be patient.
    let reply = rt.block_on(control::call(&path, &req, Duration::from_secs(300)));
    match reply {
        // Like tgtadm: the errno is the exit code.
        Err((errno, e)) => die(&e, u8::try_from(errno).unwrap_or(1)),
        Ok(r) if r.code == AdmErr::Success => {
            print!("{}", r.output);
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!("{PROG}: {}", r.code.message());
            if !r.detail.is_empty() {
                eprintln!("{PROG}: {}", r.detail);
            }
            ExitCode::from(EINVAL)
        }
    }
}

fn build_request(p: &Parsed, mode: &str, op: &str, tid: Option<i64>) -> Result<Request, ExitCode> {
    let tid = match tid {
        None => None,
        Some(t) => match u32::try_from(t) {
            Ok(t) => Some(t),
            Err(_) => {
                return Err(die(
                    &format!("-t argument value '{t}' out of range"),
                    EINVAL,
                ))
            }
        },
    };
    Ok(Request {
        mode: mode.to_string(),
        op: op.to_string(),
        tid,
        sid: number(p, "sid", 's')?,
        cid: number(p, "cid", 'c')?,
        lun: number(p, "lun", 'l')?,
        targetname: p.get("targetname").map(str::to_string),
        initiator_address: p.get("initiator-address").map(str::to_string),
        initiator_name: p.get("initiator-name").map(str::to_string),
        bstype: p.get("bstype").map(str::to_string),
        backing_store: p.get("backing-store").map(str::to_string),
        params: p.get("params").map(str::to_string),
        name: p.get("name").map(str::to_string),
        value: p.get("value").map(str::to_string),
        user: p.get("user").map(str::to_string),
        password: p.get("password").map(str::to_string),
        outgoing: p.has("outgoing"),
        force: p.has("force"),
        json: p.has("json"),
        dump: p.has("dump"),
    })
}
