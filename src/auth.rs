//! Who a connection is and which rooms it may use.
//!
//! In open mode the `hello` names the user and every room is open except the
//! direct rooms of other users. Token checking (`jwt` mode) produces the same
//! [`Identity`], with the room patterns of its `rooms` claim.

use std::sync::Arc;

pub use crate::jwt::Verifier;
use crate::protocol::{self, Hello, User};

/// A proven identity and what it may reach.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user as others see them.
    pub user: User,
    /// Room patterns (`icu-*`, `ward-3`); `None` means every room.
    pub rooms: Option<Vec<String>>,
    /// Roles named by the token (informational; rooms decide access).
    pub roles: Vec<String>,
    /// When the token expires, in seconds since the epoch.
    pub expires_at: Option<i64>,
}

/// Why a `hello` was refused, with the close code it earns.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The hello is malformed (close 4400).
    #[error("{0}")]
    Malformed(&'static str),
    /// No acceptable token (close 4401).
    #[error("{0}")]
    Unauthorized(String),
}

/// Turns a `hello` into an identity according to the configured mode.
pub fn identify(verifier: Option<&Verifier>, hello: Hello) -> Result<Identity, HelloError> {
    match verifier {
        None => identify_open(hello),
        Some(verifier) => {
            let token =
                hello.token.ok_or_else(|| HelloError::Unauthorized("hello has no token".into()))?;
            verifier.verify(&token).map_err(HelloError::Unauthorized)
        }
    }
}

/// Open mode: the user id and name come from the frame.
fn identify_open(hello: Hello) -> Result<Identity, HelloError> {
    let Some(id) = hello.user else {
        return Err(HelloError::Malformed("hello needs `user` in open mode"));
    };
    if !protocol::is_valid_name(&id) {
        return Err(HelloError::Malformed("`user` must be 1 to 64 of A-Z a-z 0-9 . _ : -"));
    }
    let name = match hello.name {
        Some(name) if protocol::is_valid_display_name(&name) => name,
        Some(_) => return Err(HelloError::Malformed("`name` must be 1 to 100 characters")),
        None => id.clone(),
    };
    let user = User { id: Arc::from(id), name: Arc::from(name) };
    Ok(Identity { user, rooms: None, roles: Vec::new(), expires_at: None })
}

impl Identity {
    /// Whether this identity may join, read and write the room.
    pub fn may_use(&self, room: &str) -> bool {
        if protocol::is_direct_room(room) {
            return protocol::is_direct_room_member(room, &self.user.id);
        }
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| pattern_matches(p, room)),
        }
    }
}

/// A room pattern: an exact name, or a prefix followed by `*`.
fn pattern_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(rooms: Option<Vec<&str>>) -> Identity {
        Identity {
            user: User { id: "alice".into(), name: "Alice".into() },
            rooms: rooms.map(|r| r.into_iter().map(String::from).collect()),
            roles: Vec::new(),
            expires_at: None,
        }
    }

    #[test]
    fn direct_rooms_admit_only_their_two_users() {
        let alice = identity(None);
        assert!(alice.may_use("dm:alice:bob"));
        assert!(!alice.may_use("dm:bob:carol"));
    }

    #[test]
    fn room_patterns_limit_access() {
        let alice = identity(Some(vec!["icu-*", "ward-3"]));
        assert!(alice.may_use("icu-7"));
        assert!(alice.may_use("ward-3"));
        assert!(!alice.may_use("ward-4"));
        assert!(alice.may_use("dm:alice:zed"));
    }
}
