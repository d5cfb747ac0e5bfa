//! Small helpers shared by the binaries: sizes, logging setup, systemd
//! notification.

#[cfg(any(feature = "fs", feature = "cli"))]
pub mod logging;
pub mod notify;

/// The variable that makes a clap binary print its shell completion script
/// (`SHEEPFS_COMPLETIONS=bash sheepfs`; used by scripts/install).
#[cfg(feature = "cli")]
pub(crate) const COMPLETIONS_ENV: &str = "SHEEPFS_COMPLETIONS";

/// If `$SHEEPFS_COMPLETIONS` names a shell (bash, zsh, fish, elvish,
/// powershell), prints the completion script of `C` for `bin` and exits.
/// Call first thing in `main`.
#[cfg(feature = "cli")]
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

/// A size in dog's grammar (`option_parse_size`): C's `strtod` number
/// (leading blanks, sign, fraction, exponent), then at most one suffix B, K,
/// M, G, T or P (powers of 1024, any case). No number reads as 0, as with
/// strtod. None when something else follows.
pub fn size_value(value: &str) -> Option<f64> {
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i] == b' ' || (9..=13).contains(&b[i])) {
        i += 1;
    }
    let num_start = i;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut had_digits = i > digits_start;
    if i < b.len() && b[i] == b'.' {
        let j = i + 1;
        let mut k = j;
        while k < b.len() && b[k].is_ascii_digit() {
            k += 1;
        }
        if k > j || had_digits {
            had_digits |= k > j;
            i = k;
        }
    }
    let mut end = i;
    if had_digits && i < b.len() && (b[i] | 0x20) == b'e' {
        let mut k = i + 1;
        if k < b.len() && (b[k] == b'+' || b[k] == b'-') {
            k += 1;
        }
        let ds = k;
        while k < b.len() && b[k].is_ascii_digit() {
            k += 1;
        }
        if k > ds {
            end = k;
        }
    }
    let (sizef, post) = if had_digits {
        let f: f64 = value[num_start..end].parse().unwrap_or(0.0);
        (f, &b[end..])
    } else {
        (0.0, b)
    };
    if post.len() > 1 {
        return None;
    }
    Some(sizef * (1u64 << suffix_shift(post.first().copied())?) as f64)
}

/// B/K/M/G/T/P (any case, or none) as a power of two.
fn suffix_shift(c: Option<u8>) -> Option<u32> {
    Some(match c.map(|c| c.to_ascii_uppercase()) {
        None | Some(b'B') => 0,
        Some(b'K') => 10,
        Some(b'M') => 20,
        Some(b'G') => 30,
        Some(b'T') => 40,
        Some(b'P') => 50,
        _ => return None,
    })
}

/// Parses a size in dog's grammar ([`size_value`], e.g. `1G`, `512M`,
/// `1.5k`, `4096`), refusing what dog would turn into another number: no
/// digits, a negative value, 2^64 or more. Whole integers are exact (no
/// rounding through a double).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("Invalid size '{s}'");
    let t = s.trim();
    if !t
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == b'.')
    {
        return Err(bad());
    }
    let v = size_value(t).ok_or_else(bad)?;
    // Digits with an optional suffix: exact integer arithmetic.
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if digits.bytes().all(|c| c.is_ascii_digit()) {
        let shift = suffix_shift(t.as_bytes().get(digits.len()).copied()).ok_or_else(bad)?;
        return digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(1 << shift))
            .ok_or_else(bad);
    }
    if !(0.0..18446744073709551616.0).contains(&v) {
        return Err(bad());
    }
    Ok(v as u64)
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
        // dog's grammar: fractions, exponents, a B suffix.
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("1e3"), Ok(1000));
        assert_eq!(parse_size("4096b"), Ok(4096));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
        assert!(parse_size("18446744073709551616").is_err());
        assert!(parse_size("12MB").is_err());
        assert!(parse_size("abc").is_err());
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
