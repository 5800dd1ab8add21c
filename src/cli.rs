//! Command line. `cordon [OPTIONS] [-- COMMAND...]` is the entrypoint; `firewall`, `plan`,
//! `check` and `harden` are subcommands. Invoked as `init-firewall.sh`, cordon behaves as
//! `cordon firewall --profile anthropic-devcontainer`.
//!
//! The only module that knows clap: it maps the arguments to each stage's own options, whose
//! defaults are the stages' constants.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::agent::{env, user};
use crate::fence::{self, Backend};
use crate::{check, credential, harden, supervise};

/// The name under which Anthropic's reference devcontainer runs its firewall script.
pub const INIT_FIREWALL_NAME: &str = "init-firewall.sh";

#[derive(Debug, Parser)]
#[command(
    name = "cordon",
    version,
    about = "Fence a container's egress to an allowlist, drop every privilege, and run a coding \
             agent as a correct PID 1",
    args_conflicts_with_subcommands = true,
    after_help = "With no COMMAND, runs `claude --dangerously-skip-permissions`. \
                  Exit statuses are listed in README.md."
)]
pub struct Cli {
    #[command(subcommand)]
    pub subcommand: Option<Sub>,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub fence: FenceArgs,

    #[command(flatten)]
    pub agent: AgentArgs,

    #[command(flatten)]
    pub sandbox: SandboxArgs,

    /// The agent command and its arguments (a Docker CMD lands here).
    /// A first word that starts with `-` is taken for a mistyped option (a usage error); after
    /// `--` anything goes. Once the command has started, every later word is its own.
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Apply and verify the fence, then exit (what `init-firewall.sh` does).
    Firewall(FirewallArgs),
    /// Print the resolved allowlist and the exact ipset / iptables-restore input; change nothing.
    Plan(FirewallArgs),
    /// Report whether the sandbox holds (fence, capabilities, setuid files, sudo); exit 0 only if
    /// it does. Runnable by any user; usable as a Docker HEALTHCHECK.
    Check(CheckArgs),
    /// Strip setuid/setgid bits, file capabilities and sudo from the root filesystem now, then
    /// exit: in a Dockerfile `RUN`, so that the image starts with nothing to strip (and works
    /// with `docker run --read-only`).
    Harden(HardenArgs),
    /// List what the DNS gateway refused and the fence rejected, with counts, first and last
    /// time, and the entry that would allow each.
    Blocked(BlockedArgs),
    /// As root, while the DNS gateway runs: allow an entry (name, wildcard or address) now, no
    /// restart.
    Allow(EntryArgs),
    /// As root, while the DNS gateway runs: deny an entry now; the addresses only it opened
    /// close, and established flows to them are cut.
    Deny(EntryArgs),
    /// As root, while the DNS gateway runs: its names, counters and answered sets.
    Status(HardenArgs),
}

#[derive(Debug, Args)]
pub struct EntryArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// An entry as in an allowlist file: NAME, NAME:PORTS or *.NAME.
    #[arg(value_name = "ENTRY")]
    pub entry: String,
}

#[derive(Debug, Args)]
pub struct BlockedArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Print JSON (one object per block) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FirewallArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub fence: FenceArgs,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub output: OutputArgs,
    /// Which iptables variant to read (as root): the one the entrypoint was told to use.
    #[arg(long, value_enum, default_value_t = Backend::Auto, env = "CORDON_IPTABLES")]
    pub iptables_backend: Backend,
}

#[derive(Debug, Args)]
pub struct HardenArgs {
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print only warnings and errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (repeat for debug output). CORDON_LOG=debug|info|warn|error also works.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl ValueEnum for Backend {
    fn value_variants<'a>() -> &'a [Self] {
        &[Backend::Auto, Backend::Nft, Backend::Legacy]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Backend::Auto => PossibleValue::new("auto")
                .help("Use the variant the image's `iptables` command points to"),
            Backend::Nft => PossibleValue::new("nft"),
            Backend::Legacy => PossibleValue::new("legacy"),
        })
    }
}

impl ValueEnum for fence::Dns {
    fn value_variants<'a>() -> &'a [Self] {
        &[fence::Dns::Gateway, fence::Dns::Static]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            fence::Dns::Gateway => PossibleValue::new("gateway").help(
                "cordon's DNS gateway answers the agent: only allowlisted names are asked \
                 upstream, their answers open their addresses; wildcards work",
            ),
            fence::Dns::Static => PossibleValue::new("static")
                .help("Resolve the names once at start; the agent asks the resolver directly"),
        })
    }
}

/// A number of seconds on the command line (fractions allowed, at most an hour).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seconds(pub Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

#[derive(Debug, Clone, Args)]
pub struct FenceArgs {
    /// Allow an entry: NAME, NAME:PORTS, *.NAME, ADDRESS[/LEN][:PORTS], [IPV6[/LEN]]:PORTS.
    /// PORTS is a comma list of PORT, LOW-HIGH, tcp/PORT or udp/PORT. Repeatable; also
    /// CORDON_ALLOW (entries separated by spaces or commas).
    #[arg(long = "allow", value_name = "ENTRY")]
    pub allow: Vec<String>,

    /// Read entries from FILE (one or more per line, # comments). Repeatable.
    #[arg(long = "allowlist", value_name = "FILE")]
    pub allowlist: Vec<PathBuf>,

    /// Add a built-in profile: claude, npm, pypi, github, vscode, anthropic-devcontainer.
    /// Repeatable or comma-separated; also CORDON_PROFILE.
    #[arg(
        long = "profile",
        value_name = "NAME",
        value_delimiter = ',',
        env = "CORDON_PROFILE"
    )]
    pub profiles: Vec<String>,

    /// Do not include the `claude` profile that is on by default.
    #[arg(long)]
    pub no_default_profile: bool,

    /// Accept inbound connections on these ports (e.g. a port published with `docker run -p`).
    /// Comma list like the port part of an entry; also CORDON_INBOUND.
    #[arg(long = "inbound", value_name = "PORTS", env = "CORDON_INBOUND")]
    pub inbound: Vec<String>,

    /// Treat a name that does not resolve as an error instead of a warning.
    #[arg(long, env = "CORDON_STRICT")]
    pub strict: bool,

    /// After the self-test, also open a real TCP connection to each allowed name.
    #[arg(long)]
    pub verify_connect: bool,

    /// How the agent's names are resolved [default: gateway; static with --exec, which leaves
    /// no process to run it].
    #[arg(long, value_enum, value_name = "MODE", env = "CORDON_DNS")]
    pub dns: Option<fence::Dns>,

    /// Upper bound on the whole resolution phase, in seconds.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
          default_value_t = Seconds(fence::DEFAULT_RESOLVE_TIMEOUT))]
    pub resolve_timeout: Seconds,

    /// The resolver configuration to read.
    #[arg(long, value_name = "FILE", default_value = fence::DEFAULT_RESOLV_CONF)]
    pub resolv_conf: PathBuf,

    /// Directory holding `allowlist` and `allowlist.d/` (read when present).
    #[arg(long, value_name = "DIR", default_value = fence::DEFAULT_CONFIG_DIR)]
    pub config_dir: PathBuf,

    /// Which iptables variant to drive.
    #[arg(long, value_enum, default_value_t = Backend::Auto, env = "CORDON_IPTABLES")]
    pub iptables_backend: Backend,

    /// Apply the fence even though this looks like the host's network namespace.
    #[arg(long)]
    pub allow_host_network: bool,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The user the agent runs as: a name, UID or UID:GID (never root).
    #[arg(long, value_name = "USER", default_value = user::DEFAULT_USER, env = "CORDON_USER")]
    pub user: String,

    /// Run the agent as the owner (uid and gid) of PATH, e.g. /workspace, so files it writes in a
    /// bind-mounted workspace belong to you on the host.
    #[arg(long, value_name = "PATH")]
    pub uid_from: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Skip stripping setuid/setgid bits, file capabilities and sudo (not recommended).
    #[arg(long)]
    pub no_harden: bool,

    /// Also strip setuid/setgid bits and file capabilities on every other mount where they would
    /// work (volumes, bind mounts, the workspace), before the agent starts.
    #[arg(long, conflicts_with = "no_harden")]
    pub strip_mounts: bool,

    /// Pass this credential variable to the agent although it matches a scrub pattern.
    #[arg(long = "keep-env", value_name = "NAME")]
    pub keep_env: Vec<String>,

    /// Also remove variables matching PATTERN (`*` matches any run of characters).
    #[arg(long = "scrub-env", value_name = "PATTERN")]
    pub scrub_env: Vec<String>,

    /// Forward signals to the agent's whole process group instead of the agent alone.
    #[arg(long)]
    pub signal_group: bool,

    /// Seconds the remaining processes get between SIGTERM and SIGKILL once the agent exits.
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
          default_value_t = Seconds(supervise::DEFAULT_GRACE))]
    pub grace: Seconds,

    /// Replace cordon with the agent instead of supervising it (no PID 1 duties).
    #[arg(long)]
    pub exec: bool,

    /// Keep the Anthropic credential from the agent: a gateway on 127.0.0.1:10080 adds it to
    /// the agent's API requests [default: on when a credential is provided, as a secret file in
    /// /run/secrets or ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_AUTH_TOKEN].
    #[arg(long, conflicts_with = "no_credential_gateway")]
    pub credential_gateway: bool,

    /// Pass the credential variables to the agent as they are (it can read the credential).
    #[arg(long)]
    pub no_credential_gateway: bool,
}

fn parse_seconds(text: &str) -> Result<Seconds, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=3600.0).contains(&seconds) {
        return Err(format!("`{text}` is outside 0..3600 seconds"));
    }
    Ok(Seconds(Duration::from_secs_f64(seconds)))
}

/// What the user asked for, with the `init-firewall.sh` alias already applied, as each stage's
/// options.
#[derive(Debug)]
pub enum Invocation {
    Run(Start),
    Firewall {
        fence: fence::Options,
        user: user::Request,
    },
    Plan {
        fence: fence::Options,
    },
    Check(check::Options),
    Harden,
    Blocked {
        json: bool,
    },
    /// A request to the running gateway (`allow ENTRY`, `deny ENTRY`, `status`).
    Control(String),
}

/// The entrypoint's options, stage by stage.
#[derive(Debug)]
pub struct Start {
    pub fence: fence::Options,
    pub user: user::Request,
    pub harden: harden::Extent,
    pub env: env::Rules,
    pub supervise: supervise::Options,
    /// Replace cordon with the agent instead of supervising it.
    pub exec: bool,
    pub credential: credential::Mode,
    pub command: Vec<OsString>,
}

/// A parsed command line: what to do, and how much to say (-q / -v).
#[derive(Debug)]
pub struct Parsed {
    pub invocation: Invocation,
    pub quiet: bool,
    pub verbose: u8,
}

/// Parses the command line. `Err` carries what to print and the status to exit with: help and
/// `--version` (0, on stdout) or a usage error (64, one line on stderr).
pub fn parse(args: Vec<OsString>) -> Result<Parsed, Refusal> {
    let invoked_as = args
        .first()
        .map(PathBuf::from)
        .and_then(|path| path.file_name().map(|name| name.to_os_string()));
    let args = if invoked_as.as_deref() == Some(INIT_FIREWALL_NAME.as_ref()) {
        init_firewall_args(args)
    } else {
        args
    };
    Cli::try_parse_from(args)
        .map(from_cli)
        .map_err(Refusal::from)
}

/// `init-firewall.sh [ARGS]` as cordon's own command line: `cordon firewall --profile
/// anthropic-devcontainer [ARGS]`, or, for a subcommand that reads or asks (`check`, `plan`,
/// `blocked`, `status`, `allow`, `deny`), that subcommand (`plan` with the same profile), so
/// that a drop-in image answers them under the one name it has.
fn init_firewall_args(args: Vec<OsString>) -> Vec<OsString> {
    const FORWARDED: [&str; 6] = ["check", "plan", "blocked", "status", "allow", "deny"];
    let mut rest = args.into_iter().skip(1).peekable();
    let mut cordon: Vec<OsString> = vec!["cordon".into()];
    match rest.peek().and_then(|first| first.to_str()) {
        Some("plan") => {
            cordon.push(rest.next().unwrap_or_default());
            cordon.extend(["--profile".into(), "anthropic-devcontainer".into()]);
        }
        Some(sub) if FORWARDED.contains(&sub) => cordon.push(rest.next().unwrap_or_default()),
        _ => cordon.extend([
            "firewall".into(),
            "--profile".into(),
            "anthropic-devcontainer".into(),
        ]),
    }
    cordon.extend(rest);
    cordon
}

/// Why the command line does not lead to a run: help or version was asked for, or it is wrong.
#[derive(Debug)]
pub struct Refusal {
    pub status: i32,
    /// Help and version text go to stdout; a usage error is one line for stderr.
    pub to_stdout: bool,
    pub text: String,
}

impl From<clap::Error> for Refusal {
    fn from(error: clap::Error) -> Self {
        if !error.use_stderr() {
            return Refusal {
                status: crate::error::exit::OK,
                to_stdout: true,
                text: error.render().to_string(),
            };
        }
        Refusal {
            status: crate::error::exit::USAGE,
            to_stdout: false,
            text: one_line(&error.render().to_string()),
        }
    }
}

/// clap's multi-line usage error as one line: the error, its tips, and where the options are
/// listed (the usage block is left out).
fn one_line(rendered: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        if line.starts_with("Usage:") {
            break;
        }
        let line = line.strip_prefix("error: ").unwrap_or(line);
        let line = line.strip_prefix("tip: ").unwrap_or(line);
        if line.starts_with("to pass ") && line.contains(" as a value") {
            parts.push("a command that starts with `-` goes after `--`".into());
        } else {
            parts.push(line.to_string());
        }
    }
    parts.push("`cordon --help` lists the options".into());
    parts.join("; ")
}

fn from_cli(cli: Cli) -> Parsed {
    let (invocation, output) = match cli.subcommand {
        Some(Sub::Firewall(args)) => (
            Invocation::Firewall {
                fence: args.fence.options(fence::Dns::Gateway),
                user: args.agent.request(),
            },
            args.output,
        ),
        Some(Sub::Plan(args)) => (
            Invocation::Plan {
                fence: args.fence.options(fence::Dns::Gateway),
            },
            args.output,
        ),
        Some(Sub::Check(args)) => (
            Invocation::Check(check::Options {
                quiet: args.output.quiet,
                backend: args.iptables_backend,
            }),
            args.output,
        ),
        Some(Sub::Harden(args)) => (Invocation::Harden, args.output),
        Some(Sub::Blocked(args)) => (Invocation::Blocked { json: args.json }, args.output),
        Some(Sub::Allow(args)) => (
            Invocation::Control(format!("allow {}", args.entry)),
            args.output,
        ),
        Some(Sub::Deny(args)) => (
            Invocation::Control(format!("deny {}", args.entry)),
            args.output,
        ),
        Some(Sub::Status(args)) => (Invocation::Control("status".into()), args.output),
        None => (
            Invocation::Run(Start {
                fence: cli.fence.options(match cli.sandbox.exec {
                    true => fence::Dns::Static,
                    false => fence::Dns::Gateway,
                }),
                user: cli.agent.request(),
                harden: cli.sandbox.harden(),
                env: env::Rules {
                    keep: cli.sandbox.keep_env,
                    scrub: cli.sandbox.scrub_env,
                },
                supervise: supervise::Options {
                    signal_group: cli.sandbox.signal_group,
                    grace: cli.sandbox.grace.0,
                },
                exec: cli.sandbox.exec,
                credential: match (
                    cli.sandbox.credential_gateway,
                    cli.sandbox.no_credential_gateway,
                ) {
                    (true, _) => credential::Mode::On,
                    (_, true) => credential::Mode::Off,
                    _ => credential::Mode::Auto,
                },
                command: cli.command,
            }),
            cli.output,
        ),
    };
    Parsed {
        invocation,
        quiet: output.quiet,
        verbose: output.verbose,
    }
}

impl FenceArgs {
    /// The fence's options; `dns` where the command line and CORDON_DNS say nothing.
    fn options(self, dns: fence::Dns) -> fence::Options {
        fence::Options {
            sources: fence::Sources {
                allow: self.allow,
                allowlist: self.allowlist,
                profiles: self.profiles,
                default_profile: !self.no_default_profile,
                inbound: self.inbound,
                strict: self.strict,
                config_dir: self.config_dir,
            },
            dns: self.dns.unwrap_or(dns),
            resolve_timeout: self.resolve_timeout.0,
            resolv_conf: self.resolv_conf,
            backend: self.iptables_backend,
            allow_host_network: self.allow_host_network,
            verify_connect: self.verify_connect,
            credential_upstream: None,
        }
    }
}

impl AgentArgs {
    fn request(self) -> user::Request {
        user::Request {
            user: self.user,
            uid_from: self.uid_from,
        }
    }
}

impl SandboxArgs {
    fn harden(&self) -> harden::Extent {
        match (self.no_harden, self.strip_mounts) {
            (true, _) => harden::Extent::Skip,
            (false, true) => harden::Extent::AllMounts,
            (false, false) => harden::Extent::RootFilesystem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Invocation {
        parse(args.iter().map(OsString::from).collect())
            .expect("a valid command line")
            .invocation
    }

    fn refusal(args: &[&str]) -> Refusal {
        parse(args.iter().map(OsString::from).collect()).expect_err("a usage error")
    }

    #[test]
    fn a_mistyped_option_is_a_usage_error_naming_the_closest_option() {
        let refused = refusal(&["cordon", "--alow", "example.test"]);
        assert_eq!(refused.status, crate::error::exit::USAGE);
        assert!(!refused.to_stdout);
        assert_eq!(refused.text.lines().count(), 1, "{}", refused.text);
        assert!(refused.text.contains("'--alow'"), "{}", refused.text);
        assert!(refused.text.contains("'--allow'"), "{}", refused.text);
        // A single dash is not a command either.
        let refused = refusal(&["cordon", "-x", "sh"]);
        assert_eq!(refused.status, crate::error::exit::USAGE);
        assert_eq!(refused.text.lines().count(), 1, "{}", refused.text);
    }

    #[test]
    fn every_usage_error_exits_64_in_one_line() {
        for args in [
            &["cordon", "--grace", "forever", "sh"][..],
            &["cordon", "--iptables-backend", "iptables"],
            &["cordon", "--quiet", "--verbose", "sh"],
            &["cordon", "plan", "--bogus"],
            &["cordon", "check", "extra"],
            &["init-firewall.sh", "--nope"],
        ] {
            let refused = refusal(args);
            assert_eq!(refused.status, crate::error::exit::USAGE, "{args:?}");
            assert_eq!(
                refused.text.lines().count(),
                1,
                "{args:?}: {}",
                refused.text
            );
        }
    }

    #[test]
    fn help_and_version_go_to_stdout_with_status_0() {
        for args in [
            &["cordon", "--help"][..],
            &["cordon", "--version"],
            &["cordon", "plan", "-h"],
        ] {
            let refused = refusal(args);
            assert_eq!((refused.status, refused.to_stdout), (0, true), "{args:?}");
        }
    }

    #[test]
    fn after_double_dash_a_command_may_start_with_a_dash() {
        let Invocation::Run(Start { command, .. }) = parse_strs(&["cordon", "--", "-weird", "x"])
        else {
            panic!("expected the entrypoint form");
        };
        assert_eq!(command, ["-weird", "x"]);
    }

    #[test]
    fn docker_cmd_is_the_command_with_its_own_flags() {
        let Invocation::Run(Start { command, .. }) = parse_strs(&[
            "cordon",
            "claude",
            "--dangerously-skip-permissions",
            "-p",
            "hi",
        ]) else {
            panic!("expected the entrypoint form");
        };
        assert_eq!(
            command,
            ["claude", "--dangerously-skip-permissions", "-p", "hi"]
        );
    }

    #[test]
    fn options_before_double_dash_belong_to_cordon() {
        let Invocation::Run(Start { fence, command, .. }) = parse_strs(&[
            "cordon",
            "--allow",
            "example.test",
            "--",
            "sh",
            "-c",
            "true",
        ]) else {
            panic!("expected the entrypoint form");
        };
        assert_eq!(fence.sources.allow, ["example.test"]);
        assert_eq!(command, ["sh", "-c", "true"]);
    }

    #[test]
    fn init_firewall_name_means_firewall_with_the_reference_profile() {
        let Invocation::Firewall { fence, .. } = parse_strs(&["/usr/local/bin/init-firewall.sh"])
        else {
            panic!("expected the firewall subcommand");
        };
        assert_eq!(fence.sources.profiles, ["anthropic-devcontainer"]);
    }

    /// Under the drop-in's one name, the reading subcommands answer as under `cordon`'s.
    #[test]
    fn init_firewall_sh_forwards_the_reading_subcommands() {
        let at = "/usr/local/bin/init-firewall.sh";
        assert!(matches!(parse_strs(&[at]), Invocation::Firewall { .. }));
        assert!(matches!(
            parse_strs(&[at, "--strict"]),
            Invocation::Firewall { .. }
        ));
        assert!(matches!(parse_strs(&[at, "check"]), Invocation::Check(_)));
        assert!(matches!(
            parse_strs(&[at, "check", "-q"]),
            Invocation::Check(check::Options { quiet: true, .. })
        ));
        assert!(matches!(
            parse_strs(&[at, "blocked"]),
            Invocation::Blocked { .. }
        ));
        assert!(matches!(
            parse_strs(&[at, "status"]),
            Invocation::Control(_)
        ));
        match parse_strs(&[at, "plan"]) {
            Invocation::Plan { fence } => assert!(fence
                .sources
                .profiles
                .contains(&"anthropic-devcontainer".to_string())),
            other => panic!("{other:?}"),
        }
        match parse_strs(&[at, "allow", "x.test"]) {
            Invocation::Control(line) => assert_eq!(line, "allow x.test"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_dns_gateway_is_the_default_where_cordon_stays() {
        let dns = |args: &[&str]| match parse_strs(args) {
            Invocation::Run(start) => start.fence.dns,
            Invocation::Firewall { fence, .. } | Invocation::Plan { fence } => fence.dns,
            other => panic!("{other:?}"),
        };
        assert_eq!(dns(&["cordon", "sh"]), fence::Dns::Gateway);
        assert_eq!(dns(&["cordon", "plan"]), fence::Dns::Gateway);
        // The drop-in leaves the gateway running as a daemon; --exec leaves nothing.
        assert_eq!(dns(&["cordon", "--exec", "sh"]), fence::Dns::Static);
        assert_eq!(dns(&["cordon", "firewall"]), fence::Dns::Gateway);
        assert_eq!(dns(&["init-firewall.sh"]), fence::Dns::Gateway);
        assert_eq!(
            dns(&["cordon", "--dns", "static", "sh"]),
            fence::Dns::Static
        );
        assert_eq!(
            dns(&["cordon", "--exec", "--dns", "gateway", "sh"]),
            fence::Dns::Gateway,
            "refused later, with the reason"
        );
    }

    #[test]
    fn subcommands_parse() {
        assert!(matches!(
            parse_strs(&["cordon", "plan", "--allow", "a.test"]),
            Invocation::Plan { .. }
        ));
        assert!(matches!(
            parse_strs(&["cordon", "check"]),
            Invocation::Check(_)
        ));
    }
}
