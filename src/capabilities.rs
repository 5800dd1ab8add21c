//! The capabilities a start needs, checked together before anything changes: a container started
//! with too few (`--cap-drop ALL`, a Kubernetes securityContext) gets one line that names every
//! missing one, what it is for, and the `--cap-add` flags that add them.
//!
//! cordon runs as root, so what it holds is its effective set (an exec'd tool gets no more than
//! that either: the bounding set already limited it when cordon itself was exec'd).

use crate::error::{Error, Result};
use crate::sys::caps::{self, Capability};

/// One capability a stage uses, and what for (the error names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub cap: Capability,
    pub for_what: &'static str,
}

const fn need(cap: Capability, for_what: &'static str) -> Need {
    Need { cap, for_what }
}

/// The self-test owns its probe sockets as the agent's uid (setfsuid).
pub const PROBES: Need = need(
    Capability::CAP_SETUID,
    "the self-test's probes as the agent's uid",
);

/// Loading and proving the fence. iptables' set match (either backend) and iptables-legacy talk
/// to the kernel through a raw socket.
pub const FENCE: &[Need] = &[
    need(Capability::CAP_NET_ADMIN, "loading the firewall"),
    need(Capability::CAP_NET_RAW, "iptables' socket to ipset"),
    PROBES,
];

/// Creating or renumbering the agent's HOME (`--uid-from`, a uid without a passwd entry).
pub const HOME: &[Need] = &[need(Capability::CAP_CHOWN, "giving the agent its HOME")];

/// Harden: reading every directory of the root filesystem, clearing setuid/setgid bits (also of
/// files root does not own), removing file capabilities, emptying sudoers.
pub const HARDEN: &[Need] = &[
    need(
        Capability::CAP_DAC_OVERRIDE,
        "reading every directory and emptying sudoers",
    ),
    need(
        Capability::CAP_FOWNER,
        "clearing setuid bits of files root does not own",
    ),
    need(Capability::CAP_SETFCAP, "removing file capabilities"),
];

/// The drop to the agent's user.
pub const DROP: &[Need] = &[
    need(Capability::CAP_SETUID, "switching to the agent's uid"),
    need(Capability::CAP_SETGID, "switching to the agent's groups"),
    need(
        Capability::CAP_SETPCAP,
        "emptying the agent's capability sets and locking securebits",
    ),
];

/// PID 1 keeps CAP_KILL to signal the agent's processes (another uid) in the sweep.
pub const SUPERVISE: &[Need] = &[need(
    Capability::CAP_KILL,
    "signalling the agent's processes when it exits",
)];

/// Fails with every capability of `needs` that the effective set lacks.
pub fn require(needs: &[Need]) -> Result<()> {
    let missing = missing(needs, caps::holds);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingCapabilities { missing })
    }
}

/// The needs whose capability `held` says is absent, each capability once (first reason kept).
fn missing(needs: &[Need], held: impl Fn(Capability) -> bool) -> Vec<Need> {
    let mut missing: Vec<Need> = Vec::new();
    for need in needs {
        if !held(need.cap) && !missing.iter().any(|m| m.cap == need.cap) {
            missing.push(*need);
        }
    }
    missing
}

/// `NET_ADMIN`: the name Docker's `--cap-add` and Kubernetes take.
pub fn short_name(cap: Capability) -> String {
    cap.to_string().trim_start_matches("CAP_").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_missing_capability_is_named_once_with_its_first_reason() {
        let needs: Vec<Need> = [FENCE, HARDEN, DROP, SUPERVISE].concat();
        let held = [Capability::CAP_NET_ADMIN, Capability::CAP_DAC_OVERRIDE];
        let missing = missing(&needs, |cap| held.contains(&cap));
        let names: Vec<String> = missing.iter().map(|n| short_name(n.cap)).collect();
        assert_eq!(
            names,
            ["NET_RAW", "SETUID", "FOWNER", "SETFCAP", "SETGID", "SETPCAP", "KILL"]
        );
        assert_eq!(
            missing[1].for_what,
            "the self-test's probes as the agent's uid"
        );
        let error = Error::MissingCapabilities { missing };
        let text = error.to_string();
        assert_eq!(text.lines().count(), 1);
        assert!(
            text.contains(
                "--cap-add NET_RAW --cap-add SETUID --cap-add FOWNER --cap-add SETFCAP --cap-add SETGID \
                 --cap-add SETPCAP --cap-add KILL"
            ),
            "{text}"
        );
        assert_eq!(error.exit_code(), crate::error::exit::PERMISSION);
    }

    #[test]
    fn nothing_is_missing_when_everything_is_held() {
        let needs: Vec<Need> = [FENCE, HOME, HARDEN, DROP, SUPERVISE].concat();
        assert!(missing(&needs, |_| true).is_empty());
    }
}
