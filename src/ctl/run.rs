//! sheepctl's main: the command line parsed with the tables of [`super`],
//! then the command run against sheep ([`super::cmds`]).

use super::dog::Ctx;
use super::getopt::{self, Item, OptSpec};
use super::*;
use crate::client::{Options, SheepAddr};
use std::time::{Duration, Instant};

/// Runs sheepctl with `args` (including `argv[0]`); returns the exit code.
pub fn run(args: Vec<String>) -> i32 {
    let start = Instant::now();
    let code = match run_inner(&args, start) {
        Ok(c) => c,
        Err(Exit(c)) => c,
    };
    let _ = std::io::stdout().flush();
    code
}

fn run_inner(args: &[String], start: Instant) -> R<i32> {
    let prog = args.first().map(String::as_str).unwrap_or(PROG);
    if args.len() < 2 {
        return Err(usage(0));
    }
    let cmd = args[1].as_str();
    if cmd == "--version" {
        out(&format!("{PROG} {}\n", env!("CARGO_PKG_VERSION")));
        return Ok(EXIT_SUCCESS);
    }
    let Some(&(cmd_name, subs, cmd_opts)) = COMMANDS.iter().find(|c| c.0 == cmd) else {
        if !matches!(cmd, "help" | "--help" | "-h") {
            errln(&format!("Invalid command '{cmd}'"));
            return Err(usage(EXIT_USAGE));
        }
        return Err(usage(0));
    };
    let subcmd = args.get(2).map(String::as_str);
    let Some(sc) = subcmd.and_then(|s| subs.iter().find(|x| x.name == s)) else {
        if let Some(s) = subcmd {
            if !matches!(s, "help" | "--help" | "-h") {
                errln(&format!("Invalid command '{cmd} {s}'"));
            }
        }
        errln(&format!("Available {cmd} commands:"));
        for x in subs {
            errln(&format!("  {cmd} {}", x.name));
        }
        return Err(Exit(EXIT_USAGE));
    };

    // getopt over argv[3..] with the subcommand's options plus ours.
    let mut specs: Vec<OptSpec> = sc
        .opts
        .chars()
        .filter_map(|c| find_opt(c, cmd_opts))
        .map(|o| OptSpec {
            ch: o.0 as u32,
            name: o.1,
            has_arg: o.2,
        })
        .collect();
    specs.push(OptSpec {
        ch: OPT_SOCKET,
        name: "socket",
        has_arg: true,
    });
    specs.push(OptSpec {
        ch: OPT_VERSION,
        name: "version",
        has_arg: false,
    });
    let (items, rest) = getopt::parse(prog, &args[3..], &specs);

    let mut host = "127.0.0.1".to_string();
    let mut port = crate::proto::SD_LISTEN_PORT;
    let mut socket: Option<String> = None;
    if let Ok(env) = std::env::var("SHEEPDOG_DOG_ADDR") {
        host = resolve(&env).ok_or_else(|| {
            errln(&format!("Invalid ip address {env}"));
            Exit(EXIT_FAILURE)
        })?;
    }
    if let Ok(env) = std::env::var("SHEEPDOG_DOG_PORT") {
        port = parse_port(&env)?;
    }
    let (mut raw, mut verbose, mut timed) = (false, false, false);
    let mut data = CmdData::default();
    for it in items {
        match it {
            Item::Err(msg) => {
                errln(&msg);
                return Err(usage(EXIT_USAGE));
            }
            Item::Opt(ch, val) => {
                let v = val.unwrap_or_default();
                match ch {
                    OPT_SOCKET => socket = Some(v),
                    OPT_VERSION => {
                        out(&format!("{PROG} {}\n", env!("CARGO_PKG_VERSION")));
                        return Ok(EXIT_SUCCESS);
                    }
                    _ => {
                        let c = char::from_u32(ch).unwrap_or('?');
                        match c {
                            'a' => {
                                host = resolve(&v).ok_or_else(|| {
                                    errln(&format!("Invalid ip address {v}"));
                                    Exit(EXIT_FAILURE)
                                })?
                            }
                            'p' => port = parse_port(&v)?,
                            'r' => raw = true,
                            'v' => verbose = true,
                            'h' => return Err(subcommand_usage(cmd_name, sc, cmd_opts, &[], 0)),
                            'T' => timed = true,
                            _ => match cmd_name {
                                "vdi" => vdi_parser(&mut data, c, &v)?,
                                "cluster" => cluster_parser(&mut data, c, &v)?,
                                _ => return Err(usage(EXIT_USAGE)),
                            },
                        }
                    }
                }
            }
        }
    }

    let addr = match socket {
        Some(p) => SheepAddr::Unix(p.into()),
        None => SheepAddr::tcp(host, port),
    };
    let opts = Options {
        connections: 1,
        // dog waits for sheep as long as it takes; we bound it generously.
        request_timeout: Duration::from_secs(300),
        // dog never retries a failed connect or exchange.
        retry_timeout: Duration::ZERO,
        connect_timeout: Duration::from_secs(5),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln(&format!("Failed to init work queue: {e}"));
            return Err(Exit(EXIT_SYSFAIL));
        }
    };
    let mut ctx = Ctx::new(addr, opts);
    ctx.raw = raw;
    ctx.verbose = verbose;
    let inv = Invocation {
        cmd_name,
        sc,
        cmd_opts,
        rest,
        data,
    };
    let ret = rt.block_on(async {
        if sc.flags & NEED_NODELIST != 0 {
            ctx.update_node_list().await?;
        }
        if sc.flags & NEED_ARG != 0 && inv.rest.is_empty() {
            return Err(subcommand_usage(cmd_name, sc, cmd_opts, &[], EXIT_USAGE));
        }
        let r = cmds::dispatch(&mut ctx, &inv).await?;
        ctx.client.close().await;
        Ok(r)
    })?;
    if ret == EXIT_USAGE {
        return Err(subcommand_usage(cmd_name, sc, cmd_opts, &[], EXIT_USAGE));
    }
    if timed {
        out(&format!(
            "\nElapsed time: {:.3} seconds\n",
            start.elapsed().as_secs_f64()
        ));
    }
    Ok(ret)
}
