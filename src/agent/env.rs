//! The agent's environment: credentials removed (not blanked), cordon's own settings dropped,
//! HOME/USER/LOGNAME/SHELL from the account.
//!
//! A variable is removed when its name matches a scrub pattern (the defaults below, then
//! `--scrub-env`) and no keep pattern. Patterns are names with `*` for any run of characters,
//! matched without regard to ASCII case (`github_token` goes like `GITHUB_TOKEN`). Precedence,
//! strongest first: `CORDON_*` (always removed: they configure cordon, not the agent),
//! `--keep-env`, `--scrub-env`, the default keep list, the default scrub list.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use crate::agent::user::Account;

/// Names or patterns of variables that carry secrets or a way out of the container.
pub const DEFAULT_SCRUB: &[&str] = &[
    // Secrets by name.
    "TOKEN",
    "*_TOKEN",
    "*_TOKEN_*",
    "*SECRET*",
    "*PASSWORD*",
    "*PASSWD*",
    "*_PWD",
    "*API_KEY*",
    "*APIKEY*",
    "*_KEY",
    "*ACCESS_KEY*",
    "*PRIVATE_KEY*",
    "*CREDENTIAL*",
    "*_AUTH",
    "*_JWT",
    "*_COOKIE",
    "*_DSN",
    "*_PAT",
    "*-TOKEN",
    "*APITOKEN*",
    "*AUTHTOKEN*",
    "*PASSPHRASE*",
    "*WEBHOOK*",
    "*_CREDS",
    "*CONNECTION_STRING*",
    "BW_SESSION",
    // Cloud and tool credentials.
    "AWS_*",
    "AZURE_*",
    "ARM_CLIENT_*",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_AUTH_*",
    "GH_TOKEN",
    "GITHUB_TOKEN",
    "NPM_TOKEN",
    "OP_SESSION_*",
    "KRB5CCNAME",
    "DOCKER_AUTH_CONFIG",
    // Sockets and helpers that reach back to the host: agents, editors, container engines.
    "SSH_AUTH_SOCK",
    "GPG_AGENT_INFO",
    "VSCODE_IPC_HOOK*",
    "VSCODE_GIT_ASKPASS_*",
    "VSCODE_GIT_IPC_HANDLE",
    "REMOTE_CONTAINERS_IPC",
    "REMOTE_CONTAINERS_SOCKETS",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "SUDO_ASKPASS",
    "DOCKER_HOST",
    "CONTAINER_HOST",
];

/// What the agent itself needs to reach its API, although the names look like credentials.
pub const DEFAULT_KEEP: &[&str] = &[
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
];

/// cordon's own configuration, never passed on.
const OWN_PREFIX: &str = "CORDON_*";

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct AgentEnvironment {
    pub vars: Vec<(OsString, OsString)>,
    /// Names (never values) of the variables that were removed.
    pub removed: Vec<String>,
    /// Those of `removed` that went because of their value, with what the value holds.
    pub by_value: Vec<(String, &'static str)>,
}

impl AgentEnvironment {
    pub fn log(&self) {
        if self.removed.is_empty() {
            log::info!("environment: no credential variables to remove");
        } else {
            log::info!(
                "environment: removed {} variable{}: {}",
                self.removed.len(),
                if self.removed.len() == 1 { "" } else { "s" },
                self.removed.join(", ")
            );
        }
        for (name, holds) in &self.by_value {
            log::info!("environment: {name} held {holds}; --keep-env {name} keeps it");
        }
    }
}

pub fn agent_environment(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    account: &Account,
    rules: &Rules,
) -> AgentEnvironment {
    let mut kept: Vec<(OsString, OsString)> = Vec::new();
    let mut removed = Vec::new();
    let mut by_value = Vec::new();
    for (name, value) in vars {
        if name.is_empty() || name.as_bytes().contains(&b'=') {
            continue;
        }
        let verdict = rules.verdict(&name, &value);
        if verdict != Verdict::Keep {
            let name = name.to_string_lossy().into_owned();
            if let Verdict::RemoveForValue(holds) = verdict {
                by_value.retain(|(n, _)| *n != name);
                by_value.push((name.clone(), holds));
            }
            if !removed.contains(&name) {
                removed.push(name);
            }
        } else if let Some(slot) = kept.iter_mut().find(|(kept_name, _)| *kept_name == name) {
            slot.1 = value;
        } else {
            kept.push((name, value));
        }
    }
    let identity = [
        ("HOME", account.home.as_os_str().to_os_string()),
        ("USER", account.name.clone().into()),
        ("LOGNAME", account.name.clone().into()),
        ("SHELL", account.shell.as_os_str().to_os_string()),
    ];
    for (name, value) in identity {
        set(&mut kept, name, value);
    }
    if !kept.iter().any(|(name, _)| name == "PATH") {
        kept.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    removed.sort();
    by_value.sort();
    AgentEnvironment {
        vars: kept,
        removed,
        by_value,
    }
}

/// The names among `vars` that cordon would remove as credentials by default (its own `CORDON_*`
/// settings aside), and the Anthropic credential variables unless they hold the credential
/// gateway's placeholder: for `cordon check`, which runs with the container's configured
/// environment, as `docker exec` sessions do.
pub fn credential_names(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<String> {
    let rules = Rules::default();
    let anthropic = |name: &OsStr, value: &OsStr| {
        [
            "ANTHROPIC_API_KEY",
            "CLAUDE_CODE_OAUTH_TOKEN",
            "ANTHROPIC_AUTH_TOKEN",
        ]
        .iter()
        .any(|n| name == *n)
            && !value.is_empty()
            && value != crate::credential::PLACEHOLDER
    };
    let mut names: Vec<String> = vars
        .into_iter()
        .filter(|(name, _)| !matches(OWN_PREFIX.as_bytes(), name.as_bytes()))
        .filter(|(name, value)| {
            rules.verdict(name, value) != Verdict::Keep || anthropic(name, value)
        })
        .map(|(name, _)| name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn set(vars: &mut Vec<(OsString, OsString)>, name: &str, value: OsString) {
    match vars.iter_mut().find(|(existing, _)| existing == name) {
        Some(slot) => slot.1 = value,
        None => vars.push((name.into(), value)),
    }
}

/// The user's adjustments to the scrub (`--keep-env`, `--scrub-env`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    /// Names passed to the agent although they match a scrub pattern or hold a credential.
    pub keep: Vec<String>,
    /// More patterns to remove (`*` matches any run of characters).
    pub scrub: Vec<String>,
}

impl Rules {
    fn verdict(&self, name: &OsStr, value: &OsStr) -> Verdict {
        let name = name.as_bytes();
        let user = |patterns: &[String]| any_match(patterns.iter().map(String::as_str), name);
        if matches(OWN_PREFIX.as_bytes(), name) || user(&self.scrub) && !user(&self.keep) {
            Verdict::RemoveForName
        } else if user(&self.keep) || any_match(DEFAULT_KEEP.iter().copied(), name) {
            Verdict::Keep
        } else if any_match(DEFAULT_SCRUB.iter().copied(), name) {
            Verdict::RemoveForName
        } else if let Some(holds) = credential_value(value.as_bytes()) {
            Verdict::RemoveForValue(holds)
        } else {
            Verdict::Keep
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    RemoveForName,
    RemoveForValue(&'static str),
}

/// Well-known prefixes of tokens: GitHub, GitLab, Slack, npm, PyPI, Hugging Face, Anthropic and
/// OpenAI-style keys, DigitalOcean, Shopify.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxr-",
    "xoxs-",
    "xapp-",
    "npm_",
    "pypi-",
    "hf_",
    "sk-",
    "dop_v1_",
    "shpat_",
];

/// What a value holds that makes it a credential whatever its variable is called: a URL with a
/// user or password in it, an Authorization header, a PEM block, a JWT, an AWS access key id or
/// a token with a well-known prefix (a word of at least 20 characters).
pub fn credential_value(value: &[u8]) -> Option<&'static str> {
    let text = String::from_utf8_lossy(value);
    let lower = text.to_ascii_lowercase();
    if text.contains("-----BEGIN ") {
        return Some("a PEM block");
    }
    if lower.contains("authorization:")
        || lower.starts_with("bearer ")
        || lower.starts_with("basic ")
    {
        return Some("an Authorization header");
    }
    if url_with_userinfo(&text) {
        return Some("credentials in a URL");
    }
    let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || "_-.".contains(c)));
    for word in words {
        if word.len() < 20 {
            continue;
        }
        if is_jwt(word) {
            return Some("a JWT");
        }
        let aws_id = word.len() == 20
            && (word.starts_with("AKIA") || word.starts_with("ASIA"))
            && word
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if aws_id {
            return Some("an AWS access key id");
        }
        if TOKEN_PREFIXES.iter().any(|prefix| word.starts_with(prefix)) {
            return Some("a token");
        }
    }
    None
}

/// `scheme://user@host` or `scheme://user:password@host`, anywhere in the value.
fn url_with_userinfo(text: &str) -> bool {
    text.match_indices("://").any(|(at, _)| {
        let rest = &text[at + 3..];
        let authority = rest.split(['/', '?', '#', ' ']).next().unwrap_or("");
        authority.contains('@')
    })
}

fn is_jwt(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && word.starts_with("eyJ")
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn any_match<'p>(patterns: impl IntoIterator<Item = &'p str>, name: &[u8]) -> bool {
    patterns
        .into_iter()
        .any(|pattern| matches(pattern.as_bytes(), name))
}

/// Glob match where `*` stands for any run of bytes, ignoring ASCII case.
pub fn matches(pattern: &[u8], name: &[u8]) -> bool {
    let Some(star) = pattern.iter().position(|&b| b == b'*') else {
        return pattern.eq_ignore_ascii_case(name);
    };
    let (prefix, rest) = (&pattern[..star], &pattern[star + 1..]);
    if name.len() < prefix.len() || !name[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return false;
    }
    let name = &name[prefix.len()..];
    (0..=name.len()).any(|start| matches(rest, &name[start..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn account() -> Account {
        Account {
            name: "node".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: PathBuf::from("/home/node"),
            shell: PathBuf::from("/bin/bash"),
        }
    }

    fn scrub(vars: &[(&str, &str)], rules: &Rules) -> AgentEnvironment {
        agent_environment(
            vars.iter().map(|(name, value)| (name.into(), value.into())),
            &account(),
            rules,
        )
    }

    fn names(env: &AgentEnvironment) -> Vec<String> {
        env.vars
            .iter()
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect()
    }

    fn value<'a>(env: &'a AgentEnvironment, name: &str) -> Option<&'a OsStr> {
        env.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_os_str())
    }

    /// `cordon check` names a real Anthropic credential in an exec session's environment (the
    /// credential gateway keeps it from the agent: a session holding it undoes that), not the
    /// gateway's placeholder.
    #[test]
    fn check_names_a_real_anthropic_credential_not_the_placeholder() {
        let vars = |pairs: &[(&str, &str)]| -> Vec<(OsString, OsString)> {
            pairs
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect()
        };
        let real = vars(&[
            ("ANTHROPIC_API_KEY", "sk-ant-api03-real"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "tok"),
            ("CORDON_ALLOW", "x.test"),
            ("GITHUB_TOKEN", "ghp_x"),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:10080"),
        ]);
        assert_eq!(
            credential_names(real),
            [
                "ANTHROPIC_API_KEY",
                "CLAUDE_CODE_OAUTH_TOKEN",
                "GITHUB_TOKEN"
            ]
        );
        let placeholder = vars(&[
            ("ANTHROPIC_AUTH_TOKEN", crate::credential::PLACEHOLDER),
            ("ANTHROPIC_BASE_URL", "http://127.0.0.1:10080"),
        ]);
        assert!(credential_names(placeholder).is_empty());
    }

    /// The credential variables a review found reaching the agent, by name or by value, and
    /// look-alikes that must stay.
    #[test]
    fn credentials_by_name_and_by_value() {
        let removed = [
            ("DATABASE_URL", "postgres://app:s3cret@db:5432/app"),
            (
                "MONGODB_URI",
                "mongodb+srv://admin:pw@cluster0.example.net/db",
            ),
            ("CONNECTION_STRING", "Server=db;User Id=sa;Password=pw;"),
            ("GITHUB_PAT", "x"),
            ("GH-TOKEN", "x"),
            ("BW_SESSION", "x"),
            ("npm_config_//registry.npmjs.org/:_authToken", "x"),
            ("npm_config__authToken", "x"),
            ("PIP_INDEX_URL", "https://user:pw@pypi.example.com/simple"),
            ("HTTPS_PROXY", "http://user:pw@proxy:3128"),
            ("ALL_PROXY", "socks5://token@proxy:1080"),
            ("GPG_PASSPHRASE", "x"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T0/B0/x",
            ),
            (
                "GIT_CONFIG_VALUE_0",
                "AUTHORIZATION: basic eC1hY2Nlc3MtdG9rZW46Z2hw",
            ),
            ("DOCKER_CREDS", "x"),
            ("APITOKEN", "x"),
            ("SOME_SETTING", "ghp_0123456789abcdefghijklmnopqrstuvwxyz"),
            ("DEPLOY", "AKIAIOSFODNN7EXAMPLE"),
            (
                "SESSION",
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
            ),
            (
                "CERT",
                "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
            ),
        ];
        let kept = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("NODE_OPTIONS", "--max-old-space-size=4096"),
            ("HTTPS_PROXY", "http://proxy.internal:3128"),
            ("TERM", "xterm-256color"),
            ("TOKENIZERS_PARALLELISM", "false"),
            ("DATABASE_URL", "postgres://db:5432/app"),
            ("GIT_CONFIG_VALUE_0", "true"),
            (
                "LS_COLORS",
                "rs=0:di=01;34:ln=01;36:mh=00:pi=40;33:so=01;35:do=01;35:bd=40",
            ),
            (
                "npm_config_user_agent",
                "npm/10.2.4 node/v20.11.0 linux x64 workspaces/false",
            ),
            (
                "ANTHROPIC_API_KEY",
                "sk-ant-api03-0123456789abcdefghijklmnop",
            ),
        ];
        for (name, value) in removed {
            let env = scrub(&[(name, value)], &Rules::default());
            assert_eq!(env.removed, [name], "{name}={value} should go");
        }
        for (name, value) in kept {
            let env = scrub(&[(name, value)], &Rules::default());
            assert!(env.removed.is_empty(), "{name}={value} should stay");
        }
        let env = scrub(
            &[("DATABASE_URL", "postgres://app:s3cret@db/app")],
            &Rules::default(),
        );
        assert_eq!(
            env.by_value,
            [("DATABASE_URL".to_string(), "credentials in a URL")]
        );
        let keep = Rules {
            keep: vec!["DATABASE_URL".into()],
            ..Rules::default()
        };
        let env = scrub(&[("DATABASE_URL", "postgres://app:s3cret@db/app")], &keep);
        assert!(env.removed.is_empty());
    }

    #[test]
    fn glob_matching() {
        assert!(matches(b"AWS_*", b"AWS_SECRET_ACCESS_KEY"));
        assert!(matches(b"*_TOKEN", b"GH_TOKEN"));
        assert!(!matches(b"*_TOKEN", b"TOKENIZERS_PARALLELISM"));
        assert!(matches(b"*SECRET*", b"SECRET"));
        assert!(matches(b"*_TOKEN_*", b"GITHUB_TOKEN_RO"));
        assert!(matches(b"a*b*c", b"aXXbYYc"));
        assert!(!matches(b"a*b*c", b"aXXbYY"));
        assert!(matches(b"*", b""));
        assert!(matches(b"gh_token", b"GH_TOKEN"));
        assert!(!matches(b"GH_TOKEN", b"GH_TOKENS"));
    }

    #[test]
    fn credentials_are_removed_not_blanked() {
        let env = scrub(
            &[
                ("GH_TOKEN", "x"),
                ("GITHUB_TOKEN", "x"),
                ("NPM_TOKEN", "x"),
                ("AWS_ACCESS_KEY_ID", "x"),
                ("AWS_PROFILE", "x"),
                ("AZURE_CLIENT_SECRET", "x"),
                ("GOOGLE_APPLICATION_CREDENTIALS", "/k.json"),
                ("PGPASSWORD", "x"),
                ("MYSQL_PWD", "x"),
                ("DB_PASSWD", "x"),
                ("OPENAI_API_KEY", "x"),
                ("STRIPE_KEY", "x"),
                ("DEPLOY_PRIVATE_KEY", "x"),
                ("SENTRY_DSN", "x"),
                ("HF_TOKEN", "x"),
                ("github_token", "x"),
                ("SSH_AUTH_SOCK", "/tmp/ssh"),
                ("VSCODE_IPC_HOOK_CLI", "/tmp/vscode.sock"),
                ("REMOTE_CONTAINERS_IPC", "/tmp/rc.sock"),
                ("REMOTE_CONTAINERS_SOCKETS", "[]"),
                ("GIT_ASKPASS", "/askpass.sh"),
                ("VSCODE_GIT_ASKPASS_MAIN", "/main.js"),
                ("VSCODE_GIT_IPC_HANDLE", "/tmp/git.sock"),
                ("DOCKER_HOST", "unix:///var/run/docker.sock"),
            ],
            &Rules::default(),
        );
        assert_eq!(env.removed.len(), 24, "{:?}", env.removed);
        assert_eq!(names(&env), ["HOME", "USER", "LOGNAME", "SHELL", "PATH"]);
    }

    #[test]
    fn the_agents_own_credentials_and_everything_else_are_kept() {
        let vars = [
            ("ANTHROPIC_API_KEY", "sk"),
            ("CLAUDE_CODE_OAUTH_TOKEN", "t"),
            ("ANTHROPIC_AUTH_TOKEN", "t"),
            ("ANTHROPIC_BASE_URL", "http://mock"),
            ("TERM", "xterm-256color"),
            ("PATH", "/custom/bin:/usr/bin"),
            ("LANG", "C.UTF-8"),
            ("TOKENIZERS_PARALLELISM", "false"),
            ("PWD", "/workspace"),
            ("OLDPWD", "/"),
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NODE_EXTRA_CA_CERTS", "/ca.pem"),
            ("REMOTE_CONTAINERS", "true"),
        ];
        let env = scrub(&vars, &Rules::default());
        assert!(env.removed.is_empty(), "{:?}", env.removed);
        for (name, val) in vars {
            assert_eq!(value(&env, name), Some(OsStr::new(val)), "{name}");
        }
    }

    #[test]
    fn cordon_settings_are_never_passed_on() {
        let rules = Rules {
            keep: vec!["CORDON_ALLOW".into()],
            ..Rules::default()
        };
        let env = scrub(&[("CORDON_ALLOW", "x"), ("CORDON_LOG", "debug")], &rules);
        assert_eq!(env.removed, ["CORDON_ALLOW", "CORDON_LOG"]);
    }

    #[test]
    fn keep_env_beats_every_scrub_pattern() {
        let rules = Rules {
            keep: vec!["GH_TOKEN".into(), "AWS_*".into()],
            scrub: vec!["GH_*".into()],
        };
        let env = scrub(
            &[("GH_TOKEN", "g"), ("AWS_REGION", "eu"), ("NPM_TOKEN", "n")],
            &rules,
        );
        assert_eq!(env.removed, ["NPM_TOKEN"]);
        assert_eq!(value(&env, "GH_TOKEN"), Some(OsStr::new("g")));
        assert_eq!(value(&env, "AWS_REGION"), Some(OsStr::new("eu")));
    }

    #[test]
    fn scrub_env_adds_patterns_and_beats_the_default_keep_list() {
        let rules = Rules {
            scrub: vec![
                "DATABASE_URL".into(),
                "MY_*".into(),
                "ANTHROPIC_API_KEY".into(),
            ],
            ..Rules::default()
        };
        let env = scrub(
            &[
                ("DATABASE_URL", "postgres://u:p@db/x"),
                ("MY_THING", "1"),
                ("ANTHROPIC_API_KEY", "sk"),
                ("EDITOR", "vi"),
            ],
            &rules,
        );
        assert_eq!(
            env.removed,
            ["ANTHROPIC_API_KEY", "DATABASE_URL", "MY_THING"]
        );
        assert_eq!(names(&env)[0], "EDITOR");
    }

    #[test]
    fn identity_comes_from_the_account_and_path_gets_a_default() {
        let env = scrub(
            &[
                ("HOME", "/root"),
                ("USER", "root"),
                ("SHELL", "/bin/sh"),
                ("TERM", "dumb"),
            ],
            &Rules::default(),
        );
        assert_eq!(value(&env, "HOME"), Some(OsStr::new("/home/node")));
        assert_eq!(value(&env, "USER"), Some(OsStr::new("node")));
        assert_eq!(value(&env, "LOGNAME"), Some(OsStr::new("node")));
        assert_eq!(value(&env, "SHELL"), Some(OsStr::new("/bin/bash")));
        assert_eq!(value(&env, "PATH"), Some(OsStr::new(DEFAULT_PATH)));
        assert_eq!(
            names(&env),
            ["HOME", "USER", "SHELL", "TERM", "LOGNAME", "PATH"]
        );
    }

    #[test]
    fn duplicate_names_keep_the_last_value_once() {
        let env = scrub(
            &[("A", "1"), ("A", "2"), ("GH_TOKEN", "x"), ("GH_TOKEN", "y")],
            &Rules::default(),
        );
        assert_eq!(value(&env, "A"), Some(OsStr::new("2")));
        assert_eq!(env.vars.iter().filter(|(n, _)| n == "A").count(), 1);
        assert_eq!(env.removed, ["GH_TOKEN"]);
    }

    #[test]
    fn non_utf8_names_are_handled() {
        use std::os::unix::ffi::OsStringExt;
        let name = OsString::from_vec(b"X\xff_TOKEN".to_vec());
        let env = agent_environment([(name, "v".into())], &account(), &Rules::default());
        assert_eq!(env.removed.len(), 1);
    }
}
