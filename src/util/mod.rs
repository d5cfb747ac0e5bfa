//! Small helpers shared by the binaries: sizes, logging setup, systemd
//! notification.

pub mod logging;
pub mod notify;

/// The variable that makes a clap binary print its shell completion script
/// (`SHEEPFS_COMPLETIONS=bash sheepfs`; used by scripts/install).
pub const COMPLETIONS_ENV: &str = "SHEEPFS_COMPLETIONS";

/// If `$SHEEPFS_COMPLETIONS` names a shell (bash, zsh, fish, elvish,
/// powershell), prints the completion script of `C` for `bin` and exits.
/// Call first thing in `main`.
pub fn completions_from_env<C: clap::CommandFactory>(bin: &str) {
    let Some(shell) = std::env::var_os(COMPLETIONS_ENV) else {
        return;
    };
    match shell.to_string_lossy().parse::<clap_complete::Shell>() {
        Ok(sh) => {
            clap_complete::generate(sh, &mut C::command(), bin, &mut std::io::stdout());
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!("{bin}: {COMPLETIONS_ENV}: {e}");
            std::process::exit(2);
        }
    }
}

/// Parses a size with an optional K/M/G/T/P suffix (powers of 1024, as dog),
/// e.g. `1G`, `512M`, `4096`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'P' => 1 << 50,
                _ => return Err(format!("Invalid size '{s}'")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("Invalid size '{s}'"));
    }
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("Invalid size '{s}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("12M"), Ok(12 << 20));
        assert_eq!(parse_size("5T"), Ok(5 << 40));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert!(parse_size("").is_err());
        assert!(parse_size("1X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999P").is_err());
    }
}

/// Checks the host part of an address given by a user: a bare number
/// (`2`, which the resolver would take as 0.0.0.2) or a dotted number that
/// is not a full IPv4 address (`127.1`) is refused with what to write.
pub fn check_host(host: &str) -> Result<(), String> {
    let numeric = !host.is_empty() && host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if numeric && host.parse::<std::net::Ipv4Addr>().is_err() {
        return Err(format!(
            "'{host}' is not a host name or IPv4 address (a bare number is not an address); \
             write HOST:PORT, e.g. 127.0.0.1:7000"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod host_tests {
    #[test]
    fn hosts() {
        for ok in ["127.0.0.1", "localhost", "sheep-1", "::1", "10.0.0.2"] {
            assert!(super::check_host(ok).is_ok(), "{ok}");
        }
        for bad in ["2", "7000", "127.1", "1.2.3", "1.2.3.4.5"] {
            assert!(super::check_host(bad).is_err(), "{bad}");
        }
    }
}
