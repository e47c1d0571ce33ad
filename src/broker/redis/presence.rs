//! Presence across pods. Each pod keeps an entry per (room, user) it
//! carries, which expires unless refreshed; the sweep refreshes all of this
//! pod's entries in one batch, every `presence.ttl / 6`, and reaps expired
//! ones, so the users of a vanished pod leave within `presence.ttl`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use redis::{Cmd, Pipeline, ScriptInvocation};
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::scripts::PRESENCE_SWEEP;
use crate::broker::{BrokerError, PresenceChange};
use crate::protocol::User;

/// Rooms swept at once in cluster mode, where each room is its own call.
const CLUSTER_SWEEP_CONCURRENCY: usize = 16;

/// A room's users on this pod, by id.
type LocalUsers = HashMap<Arc<str>, User>;

/// This pod's users, by room: the entries the sweep keeps alive.
#[derive(Default)]
pub(super) struct LocalPresence {
    rooms: Mutex<HashMap<Arc<str>, LocalUsers>>,
}

impl LocalPresence {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, LocalUsers>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, room: &str, user: &User) {
        self.lock().entry(room.into()).or_default().insert(user.id.clone(), user.clone());
    }

    fn remove(&self, room: &str, user: &str) {
        let mut rooms = self.lock();
        if let Some(users) = rooms.get_mut(room) {
            users.remove(user);
            if users.is_empty() {
                rooms.remove(room);
            }
        }
    }

    fn get(&self, room: &str, user: &str) -> Option<User> {
        self.lock().get(room)?.get(user).cloned()
    }

    /// Every room with local users, and their ids.
    fn snapshot(&self) -> HashMap<Arc<str>, Vec<Arc<str>>> {
        let rooms = self.lock();
        rooms.iter().map(|(room, users)| (room.clone(), users.keys().cloned().collect())).collect()
    }
}

impl Shared {
    /// Lifetime of an entry after each refresh: short enough that a
    /// vanished pod's users are reaped (within one more sweep) before
    /// `presence.ttl`, long enough to outlast several missed sweeps.
    fn entry_lifetime(&self) -> Duration {
        self.presence_ttl * 2 / 3
    }

    fn sweep_interval(&self) -> Duration {
        self.presence_ttl / 6
    }

    /// Keys of the presence scripts: entries, users, counts, channel.
    fn presence_keys(&self, room: &str) -> [String; 4] {
        let keys = self.keys(room);
        [keys.presence(), keys.users(), keys.counts(), keys.channel()]
    }

    /// First arguments of the presence scripts (see `presence_lib.lua`).
    fn presence_args(&self, room: &str) -> [String; 4] {
        let lifetime = self.entry_lifetime().as_millis().to_string();
        [self.publish_command().into(), room.into(), lifetime, self.node.to_string()]
    }

    /// A presence script call with the room's keys and the common arguments.
    fn presence_call<'a>(&self, script: &'a redis::Script, room: &str) -> ScriptInvocation<'a> {
        let mut call = script.prepare_invoke();
        call.key(&self.presence_keys(room)[..]).arg(&self.presence_args(room)[..]);
        call
    }

    /// Begins this pod's entry for the user; `loud` announces a new arrival
    /// from the script (the sweep restoring a lost entry).
    async fn add_entry(
        &self,
        room: &str,
        user: &User,
        loud: bool,
    ) -> Result<PresenceChange, BrokerError> {
        let json = serde_json::to_string(user)
            .map_err(|e| BrokerError::Unavailable(format!("user not encodable: {e}")))?;
        let mut call = self.presence_call(&self.scripts.presence_add, room);
        call.arg(&*user.id).arg(json).arg(if loud { "1" } else { "0" });
        let (changed, count): (i64, usize) =
            self.link.run(|mut conn| async move { call.invoke_async(&mut conn).await }).await?;
        Ok(PresenceChange { changed: changed == 1, member_count: count })
    }

    pub(super) async fn presence_add(
        &self,
        room: &str,
        user: &User,
    ) -> Result<PresenceChange, BrokerError> {
        let change = self.add_entry(room, user, false).await?;
        self.local.add(room, user);
        Ok(change)
    }

    pub(super) async fn presence_remove(
        &self,
        room: &str,
        user: &User,
    ) -> Result<PresenceChange, BrokerError> {
        // Forgotten first: should Redis fail, the entry expires by itself.
        self.local.remove(room, &user.id);
        let mut call = self.presence_call(&self.scripts.presence_remove, room);
        call.arg(&*user.id);
        let (changed, count): (i64, usize) =
            self.link.run(|mut conn| async move { call.invoke_async(&mut conn).await }).await?;
        Ok(PresenceChange { changed: changed == 1, member_count: count })
    }

    pub(super) async fn members(&self, room: &str) -> Result<Vec<User>, BrokerError> {
        let call = self.presence_call(&self.scripts.presence_members, room);
        let users: Vec<String> =
            self.link.run(|mut conn| async move { call.invoke_async(&mut conn).await }).await?;
        Ok(users.iter().filter_map(|json| serde_json::from_str(json).ok()).collect())
    }

    /// Sweeps every `presence.ttl / 6` until stopped.
    pub(super) async fn run_sweeper(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.sweep_interval());
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {
                    if let Err(err) = self.sweep().await {
                        tracing::debug!(error = %err, "presence sweep failed");
                    }
                }
            }
        }
    }

    /// One sweep: refresh and reap in every room with local members or
    /// users, then restore the entries that were found missing.
    async fn sweep(&self) -> Result<(), BrokerError> {
        let mut rooms = self.local.snapshot();
        for room in self.subs.rooms() {
            rooms.entry(room).or_default();
        }
        if rooms.is_empty() || !self.link.health().up {
            return Ok(());
        }

        let rooms: Vec<(Arc<str>, Vec<Arc<str>>)> = rooms.into_iter().collect();
        let missing = if self.cluster {
            self.sweep_each(&rooms).await?
        } else {
            self.sweep_batch(&rooms).await?
        };
        for ((room, _), users) in rooms.iter().zip(missing) {
            self.restore(room, users).await;
        }
        Ok(())
    }

    /// The sweep call of one room, by hash (pipelines load it first).
    fn sweep_command(&self, room: &str, users: &[Arc<str>]) -> Cmd {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(self.scripts.presence_sweep.get_hash()).arg(4);
        evalsha.arg(&self.presence_keys(room)[..]).arg(&self.presence_args(room)[..]);
        for user in users {
            evalsha.arg(&**user);
        }
        evalsha
    }

    /// One pipeline for all rooms (one Redis server).
    async fn sweep_batch(
        &self,
        rooms: &[(Arc<str>, Vec<Arc<str>>)],
    ) -> Result<Vec<Vec<String>>, BrokerError> {
        let mut pipe = Pipeline::with_capacity(rooms.len() + 1);
        // Loading first makes the EVALSHA calls safe after a Redis restart.
        pipe.cmd("SCRIPT").arg("LOAD").arg(PRESENCE_SWEEP).ignore();
        for (room, users) in rooms {
            pipe.add_command(self.sweep_command(room, users));
        }
        self.link.run(|mut conn| async move { pipe.query_async(&mut conn).await }).await
    }

    /// One pipeline per room (a cluster routes each to the room's node).
    async fn sweep_each(
        &self,
        rooms: &[(Arc<str>, Vec<Arc<str>>)],
    ) -> Result<Vec<Vec<String>>, BrokerError> {
        let mut calls: Vec<BoxFuture<'_, Result<(Vec<String>,), BrokerError>>> = Vec::new();
        for (room, users) in rooms {
            let mut pipe = Pipeline::with_capacity(2);
            pipe.cmd("SCRIPT").arg("LOAD").arg(PRESENCE_SWEEP).ignore();
            pipe.add_command(self.sweep_command(room, users));
            calls.push(Box::pin(
                self.link.run(|mut conn| async move { pipe.query_async(&mut conn).await }),
            ));
        }
        let answers: Vec<_> =
            futures_util::stream::iter(calls).buffered(CLUSTER_SWEEP_CONCURRENCY).collect().await;
        answers.into_iter().map(|answer| answer.map(|(missing,)| missing)).collect()
    }

    /// Brings back this pod's entries that the sweep found missing, for the
    /// users still here, and announces them as arrivals.
    async fn restore(&self, room: &Arc<str>, users: Vec<String>) {
        let users: HashSet<String> = users.into_iter().collect();
        for id in users {
            let Some(user) = self.local.get(room, &id) else { continue };
            tracing::info!(room = %room, user.id = %id, "presence entry restored");
            // Quietly: nobody was told the user left, so nobody is told of a return.
            if let Err(err) = self.add_entry(room, &user, false).await {
                tracing::warn!(room = %room, error = %err, "presence entry not restored");
            }
        }
    }
}
