//! `sheepctl`: the dog-compatible admin CLI (see `sheepfs::ctl`).

fn main() {
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(sheepfs::ctl::run(args));
}
