//! VM states (close to libvirt's: defined ≈ shut off) and which requests make sense in each.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Defined, no VMM running.
    Defined,
    /// A VMM was spawned and is building the VM.
    Starting,
    /// The guest runs.
    Running,
    /// The guest's vCPUs are paused.
    Paused,
    /// The guest was asked to power off.
    Stopping,
    /// The VMM died without saying why (no exit.json). It can be started again.
    Crashed,
}

impl VmState {
    pub const ALL: [VmState; 6] = [
        VmState::Defined,
        VmState::Starting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Defined => "defined",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Stopping => "stopping",
            VmState::Crashed => "crashed",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        VmState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether a VMM process is (supposed to be) there.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            VmState::Starting | VmState::Running | VmState::Paused | VmState::Stopping
        )
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that changes a VM's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Stop,
    Kill,
    Restart,
    /// Delete without force.
    Delete,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Stop => "stop",
            Action::Kill => "kill",
            Action::Restart => "restart",
            Action::Delete => "delete",
        }
    }
}

/// Whether `action` makes sense for a VM in `state`; the error names the state (a 409).
pub fn check(name: &str, state: VmState, action: Action) -> Result<(), String> {
    use VmState::*;
    let ok = match action {
        Action::Start => matches!(state, Defined | Crashed),
        Action::Pause => state == Running,
        Action::Resume => state == Paused,
        Action::Stop => matches!(state, Running | Paused),
        Action::Kill => state.is_active(),
        Action::Restart => matches!(state, Running | Paused),
        Action::Delete => !state.is_active(),
    };
    if ok {
        return Ok(());
    }
    let hint = match (action, state) {
        (Action::Delete, _) => " (stop it first, or force)",
        (Action::Stop, Starting) => " (kill stops it now)",
        (Action::Stop, Stopping) => " (it is already stopping; kill stops it now)",
        _ => "",
    };
    Err(format!(
        "cannot {} VM '{name}': it is {state}{hint}",
        action.verb()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use VmState::*;
        let table = [
            (Action::Start, vec![Defined, Crashed]),
            (Action::Pause, vec![Running]),
            (Action::Resume, vec![Paused]),
            (Action::Stop, vec![Running, Paused]),
            (Action::Kill, vec![Starting, Running, Paused, Stopping]),
            (Action::Restart, vec![Running, Paused]),
            (Action::Delete, vec![Defined, Crashed]),
        ];
        for (action, allowed) in table {
            for s in VmState::ALL {
                let r = check("a", s, action);
                assert_eq!(r.is_ok(), allowed.contains(&s), "{action:?} in {s}");
                if let Err(m) = r {
                    assert!(
                        m.contains(&format!("it is {s}")) && m.contains("'a'"),
                        "{m}"
                    );
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for s in VmState::ALL {
            assert_eq!(VmState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert_eq!(VmState::parse("shutoff"), None);
    }
}
