//! The module lifecycle as one pure function: where an event takes a module
//! from a state, or why it cannot. Everything that moves a module asks this
//! function first and then applies the answer as a compare-and-swap, so the
//! rules live here alone and are tested exhaustively below.

use crate::store::modules::ModuleStatus;

/// Something that may move a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// EnableModule; `hooked`: the manifest declares an install hook.
    Enable { hooked: bool },
    /// DisableModule.
    Disable,
    /// UpdateModule with a new version; `hooked`: the new manifest declares
    /// an update hook.
    NewVersion { hooked: bool },
    /// DeleteModule; `hooked`: the manifest declares a remove hook.
    Delete { hooked: bool },
    /// The running hook's job completed; `left` is the state the module
    /// left when the transition began.
    HookSucceeded { left: ModuleStatus },
    /// The running hook's job failed for good or was cancelled.
    HookFailed { left: ModuleStatus },
}

impl Event {
    fn verb(self) -> &'static str {
        match self {
            Self::Enable { .. } => "enabled",
            Self::Disable => "disabled",
            Self::NewVersion { .. } => "given a new version",
            Self::Delete { .. } => "deleted",
            Self::HookSucceeded { .. } | Self::HookFailed { .. } => "settled by a hook",
        }
    }
}

/// Where an event takes a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// It moves to (or stays in) this state.
    Status(ModuleStatus),
    /// Its row is deleted.
    Deleted,
}

/// The state a module passes through while the hook of a transition runs.
pub fn is_transition(status: ModuleStatus) -> bool {
    matches!(
        status,
        ModuleStatus::Installing | ModuleStatus::Updating | ModuleStatus::Removing
    )
}

/// Where `event` takes a module in `from`; `None` when it cannot happen.
pub fn next(from: ModuleStatus, event: Event) -> Option<Target> {
    use ModuleStatus::*;
    let to = |status| Some(Target::Status(status));
    match (from, event) {
        (Registered, Event::Enable { hooked: true }) => to(Installing),
        (Registered, Event::Enable { hooked: false }) | (Disabled, Event::Enable { .. }) => {
            to(Enabled)
        }
        (Enabled, Event::Disable) => to(Disabled),
        // Nothing is installed yet: the install hook will install the new
        // version.
        (Registered, Event::NewVersion { .. }) => to(Registered),
        (Enabled | Disabled, Event::NewVersion { hooked: true }) => to(Updating),
        (Enabled | Disabled, Event::NewVersion { hooked: false }) => to(from),
        // Nothing was installed, so there is nothing for a hook to clean up.
        (Registered, Event::Delete { .. }) => Some(Target::Deleted),
        (Enabled | Disabled, Event::Delete { hooked: true }) => to(Removing),
        (Enabled | Disabled, Event::Delete { hooked: false }) => Some(Target::Deleted),
        (Installing, Event::HookSucceeded { .. }) => to(Enabled),
        (Installing, Event::HookFailed { .. }) => to(Registered),
        (Updating, Event::HookSucceeded { left } | Event::HookFailed { left })
            if matches!(left, Enabled | Disabled) =>
        {
            to(left)
        }
        (Removing, Event::HookSucceeded { .. }) => Some(Target::Deleted),
        (Removing, Event::HookFailed { left }) if matches!(left, Enabled | Disabled) => to(left),
        _ => None,
    }
}

/// What callers may do with a module in `status`, for refusals.
pub fn allowed(status: ModuleStatus) -> &'static str {
    match status {
        ModuleStatus::Registered => "EnableModule, UpdateModule, DeleteModule",
        ModuleStatus::Enabled => "DisableModule, UpdateModule, DeleteModule",
        ModuleStatus::Disabled => "EnableModule, UpdateModule, DeleteModule",
        ModuleStatus::Installing | ModuleStatus::Updating | ModuleStatus::Removing => {
            "only UpdateModule of display_name and description until its hook job finishes \
             (WatchModule waits for it)"
        }
    }
}

/// The refusal of an event a module's state does not allow.
pub fn refusal(name: &str, status: ModuleStatus, event: Event) -> String {
    format!(
        "module {name} is {} and cannot be {} now; it allows {}",
        status.label(),
        event.verb(),
        allowed(status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ModuleStatus::*;

    const STATES: [ModuleStatus; 6] = [
        Registered, Installing, Enabled, Disabled, Updating, Removing,
    ];

    fn events() -> Vec<Event> {
        let mut events = vec![Event::Disable];
        for hooked in [false, true] {
            events.push(Event::Enable { hooked });
            events.push(Event::NewVersion { hooked });
            events.push(Event::Delete { hooked });
        }
        for left in STATES {
            events.push(Event::HookSucceeded { left });
            events.push(Event::HookFailed { left });
        }
        events
    }

    /// The whole table, written out: every (state, event) pair not listed
    /// here must be refused.
    fn expected(from: ModuleStatus, event: Event) -> Option<Target> {
        let s = |status| Some(Target::Status(status));
        let gone = Some(Target::Deleted);
        let table: &[(ModuleStatus, Event, Option<Target>)] = &[
            (Registered, Event::Enable { hooked: true }, s(Installing)),
            (Registered, Event::Enable { hooked: false }, s(Enabled)),
            (Disabled, Event::Enable { hooked: true }, s(Enabled)),
            (Disabled, Event::Enable { hooked: false }, s(Enabled)),
            (Enabled, Event::Disable, s(Disabled)),
            (
                Registered,
                Event::NewVersion { hooked: true },
                s(Registered),
            ),
            (
                Registered,
                Event::NewVersion { hooked: false },
                s(Registered),
            ),
            (Enabled, Event::NewVersion { hooked: true }, s(Updating)),
            (Enabled, Event::NewVersion { hooked: false }, s(Enabled)),
            (Disabled, Event::NewVersion { hooked: true }, s(Updating)),
            (Disabled, Event::NewVersion { hooked: false }, s(Disabled)),
            (Registered, Event::Delete { hooked: true }, gone),
            (Registered, Event::Delete { hooked: false }, gone),
            (Enabled, Event::Delete { hooked: true }, s(Removing)),
            (Enabled, Event::Delete { hooked: false }, gone),
            (Disabled, Event::Delete { hooked: true }, s(Removing)),
            (Disabled, Event::Delete { hooked: false }, gone),
            (Updating, Event::HookSucceeded { left: Enabled }, s(Enabled)),
            (
                Updating,
                Event::HookSucceeded { left: Disabled },
                s(Disabled),
            ),
            (Updating, Event::HookFailed { left: Enabled }, s(Enabled)),
            (Updating, Event::HookFailed { left: Disabled }, s(Disabled)),
            (Removing, Event::HookFailed { left: Enabled }, s(Enabled)),
            (Removing, Event::HookFailed { left: Disabled }, s(Disabled)),
        ];
        if let Some((_, _, target)) = table.iter().find(|(f, e, _)| *f == from && *e == event) {
            return *target;
        }
        match (from, event) {
            (Installing, Event::HookSucceeded { .. }) => s(Enabled),
            (Installing, Event::HookFailed { .. }) => s(Registered),
            (Removing, Event::HookSucceeded { .. }) => gone,
            _ => None,
        }
    }

    #[test]
    fn every_state_and_event_goes_where_the_table_says() {
        let mut legal = 0;
        for from in STATES {
            for event in events() {
                let target = next(from, event);
                assert_eq!(target, expected(from, event), "{from:?} + {event:?}");
                legal += usize::from(target.is_some());
            }
        }
        assert_eq!(legal, 41, "legal transitions");
    }

    #[test]
    fn transitions_accept_nothing_from_callers() {
        for from in [Installing, Updating, Removing] {
            assert!(is_transition(from));
            for hooked in [false, true] {
                for event in [
                    Event::Enable { hooked },
                    Event::NewVersion { hooked },
                    Event::Delete { hooked },
                    Event::Disable,
                ] {
                    assert_eq!(next(from, event), None, "{from:?} + {event:?}");
                }
            }
        }
    }

    #[test]
    fn hooks_settle_only_transitions() {
        for from in [Registered, Enabled, Disabled] {
            assert!(!is_transition(from));
            for left in STATES {
                assert_eq!(next(from, Event::HookSucceeded { left }), None);
                assert_eq!(next(from, Event::HookFailed { left }), None);
            }
        }
    }

    #[test]
    fn refusals_name_the_state_and_what_it_allows() {
        let message = refusal("backup", Installing, Event::Enable { hooked: true });
        assert!(message.contains("INSTALLING"), "{message}");
        assert!(message.contains("WatchModule"), "{message}");
        let message = refusal("backup", Enabled, Event::Enable { hooked: false });
        assert!(message.contains("DisableModule"), "{message}");
    }
}
