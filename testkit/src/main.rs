//! testkit: test-only helpers for cordon's network-namespace and Docker tests.
//! One module per subcommand; `util`, `net` and `dnswire` are shared plumbing.

mod dns;
mod dnswire;
mod forward;
mod listen;
mod mockapi;
mod net;
mod pid1;
mod pki;
mod probe;
mod util;

const USAGE: &str = "usage: testkit <dns|forward|listen|probe|mock-api|pki> [ARGS...]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = match args.split_first() {
        Some((cmd, rest)) => (cmd.as_str(), rest),
        None => ("", &[][..]),
    };
    let code = match cmd {
        "dns" => dns::main(rest),
        "forward" => forward::main(rest),
        "listen" => listen::main(rest),
        "probe" => probe::main(rest),
        "mock-api" => mockapi::main(rest),
        "pki" => pki::main(rest),
        cmd if pid1::COMMANDS.contains(&cmd) => pid1::main(cmd, rest),
        _ => {
            eprintln!("{USAGE}");
            2
        }
    };
    std::process::exit(code);
}
