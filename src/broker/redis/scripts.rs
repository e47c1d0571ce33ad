//! The Lua scripts, compiled into the binary. Each runs atomically on the
//! node that holds the room's keys; the presence scripts share a head.

use redis::Script;

/// Source of the sweep, which also travels in pipelines (`SCRIPT LOAD`).
pub(super) const PRESENCE_SWEEP: &str =
    concat!(include_str!("presence_lib.lua"), include_str!("presence_sweep.lua"));

/// Every script the broker runs.
pub(super) struct Scripts {
    /// Store, trim and publish a message; answer a retried `client_msg_id`.
    pub(super) publish: Script,
    /// A slice of history with acknowledgements and the trimmed mark.
    pub(super) read: Script,
    /// Record an acknowledgement and publish it.
    pub(super) acknowledge: Script,
    /// Take the passed acknowledgement deadlines.
    pub(super) claim_overdue: Script,
    /// Move a read mark forward.
    pub(super) mark_read: Script,
    /// A user's entry on this pod begins.
    pub(super) presence_add: Script,
    /// A user's entry on this pod ends.
    pub(super) presence_remove: Script,
    /// Reap, then list the present users.
    pub(super) presence_members: Script,
    /// Refresh this pod's entries of a room and reap expired ones.
    pub(super) presence_sweep: Script,
}

impl Scripts {
    /// Hashes every script once.
    pub(super) fn new() -> Self {
        Self {
            publish: Script::new(include_str!("publish.lua")),
            read: Script::new(include_str!("read.lua")),
            acknowledge: Script::new(include_str!("acknowledge.lua")),
            claim_overdue: Script::new(include_str!("claim_overdue.lua")),
            mark_read: Script::new(include_str!("mark_read.lua")),
            presence_add: Script::new(concat!(
                include_str!("presence_lib.lua"),
                include_str!("presence_add.lua")
            )),
            presence_remove: Script::new(concat!(
                include_str!("presence_lib.lua"),
                include_str!("presence_remove.lua")
            )),
            presence_members: Script::new(concat!(
                include_str!("presence_lib.lua"),
                include_str!("presence_members.lua")
            )),
            presence_sweep: Script::new(PRESENCE_SWEEP),
        }
    }
}
