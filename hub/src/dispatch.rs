//! Handing sessions to robots that are waiting in a long poll.
//!
//! Each robot has at most one poll waiting here. A session that becomes
//! available (queued, or handed back unrun) goes to the robot that has
//! waited longest among those that may take it (`routing.rs`: pins,
//! actions, labels; and room for it), and its lease travels down
//! that poll's channel at once: no robot is woken for nothing, and pickup
//! costs one database write. The poll's free slot was the robot's
//! acceptance, so the session is `running` on it from that write on.
//!
//! Every method that reads or writes the database is called inside
//! `Db::call`. On SQLite that is the hub's one connection, so the database
//! and the set of waiters change together; on PostgreSQL several
//! connections (and hubs) run at once, so a poll that found nothing
//! registers only if no news (`news`: a session offered, a slot freed)
//! came while it looked, and looks again otherwise; either way a poll and
//! a session queued at the same moment cannot miss each other. A grant to
//! a waiting poll happens in a transaction that holds the robot's row and
//! finds the poll still the robot's latest (`grant_and_deliver`), and the
//! poll answers only once it committed. Polls waiting on other hubs hear of
//! this hub's news through `peers.rs`.
//!
//! The waiters lock is never held across a database statement: a write
//! may wait up to the busy timeout for a `tasuki-hub robots|keys` command
//! beside the hub, and [`Dispatcher::forget`], [`Dispatcher::wake`] and
//! [`Dispatcher::contact`] take the lock on the runtime's own threads.
//! So a session is granted to a waiter chosen under the lock, and the
//! lease is sent only if that same registration (by `seq`) is still there
//! afterwards; otherwise the grant is taken back. The lock order is always
//! connection (and, on PostgreSQL, the robot's row), then waiters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::db::Conn;
use tasuki_protocol::Lease;
use tokio::sync::oneshot;

use crate::db::leases::{self, Load};
use crate::db::{DbError, concurrency, robots};
use crate::peers::{Notice, Peers};
use crate::routing::{Capabilities, Needs};
use crate::secrets::{MasterKey, new_lease_id};

/// Why a waiting poll is answered.
#[derive(Debug)]
pub enum Wake {
    /// A lease, and word that the transaction granting it committed: the
    /// poll answers only once it has (a robot must never hear of a lease
    /// that its next call would not find), and answers empty if it rolled
    /// back (the sender is then dropped).
    Lease(Box<Lease>, oneshot::Receiver<()>),
    /// A session the robot runs was asked to cancel.
    Cancel,
    /// The same robot polled again (its client gave up on this one).
    Replaced,
    /// The hub is stopping.
    Shutdown,
}

/// What a robot said about itself in the poll that is waiting.
#[derive(Clone)]
pub struct Want {
    pub robot_id: i64,
    pub name: String,
    /// The key and machine the poll was checked for: a lease goes to the
    /// poll only while the robot is still theirs.
    pub key_id: String,
    pub instance_id: String,
    pub poll_id: String,
    /// The poll's number, when the robot sends one (`PollRequest::poll_seq`).
    pub poll_seq: Option<i64>,
    /// This poll's token (`Dispatcher::poll_token`), the robot's latest
    /// in the database while no newer poll of it has begun, on any hub.
    pub poll_token: String,
    pub free_slots: u32,
    pub max_concurrency: u32,
    pub draining: bool,
}

struct Waiter {
    /// Registration order: the longest-waiting robot is offered first.
    seq: u64,
    want: Want,
    load: Load,
    /// The robot's catalog and labels, read when the poll began to wait.
    /// An agent registers (and sends its catalog) as it starts, before its
    /// first poll, which supersedes any older one; a registration while a
    /// poll waits (`tasuki register` run again by hand) counts from the
    /// robot's next poll, at most a hold later.
    offers: Capabilities,
    tx: oneshot::Sender<Wake>,
}

impl Waiter {
    fn wants_work(&self) -> bool {
        !self.want.draining
            && self.want.free_slots > 0
            && !self.load.exclusive
            && self.load.active < self.want.max_concurrency
            && !self.tx.is_closed()
    }

    fn may_take(&self, needs: &Needs) -> bool {
        self.wants_work()
            && needs.fits(&self.offers)
            && (!needs.single_process || self.load.active == 0)
    }
}

#[derive(Default)]
struct Waiters {
    next_seq: u64,
    by_robot: HashMap<i64, Waiter>,
    /// When each robot's last waiting poll was answered (ms since the
    /// epoch): a robot that is not waiting now polled again this soon after,
    /// or it has gone. Polls answered at once need no entry: the heartbeat
    /// at their start is that moment.
    answered_at: HashMap<i64, i64>,
    closed: bool,
}

/// A robot's polls as the dispatcher saw them.
#[derive(Debug, Clone, Copy)]
pub struct Contact {
    /// A poll is waiting on a connection that is still open.
    pub waiting: bool,
    /// When its last waiting poll was answered (ms since the epoch).
    pub answered_at_ms: Option<i64>,
}

/// The outcome of a poll that had nothing else to say.
pub enum Poll {
    Leased(Box<Lease>),
    /// Wait on this; `seq` identifies the registration for [`Dispatcher::forget`].
    Wait {
        rx: oneshot::Receiver<Wake>,
        seq: u64,
    },
    Closed,
}

/// What became of a session offered to a waiting poll.
enum Offered {
    /// The robot has polled since, here or on another hub: this poll is
    /// not its latest, and nothing was granted.
    Stale,
    /// Not granted: taken meanwhile, or the robot has no room for it.
    NotGranted,
    Granted {
        session_id: i64,
        /// False when the poll had gone and the grant was taken back.
        sent: bool,
    },
}

/// Sends a lease down a waiting poll; when the poll has gone, takes the
/// lease back and returns false.
fn send_or_withdraw(
    conn: &mut Conn<'_>,
    waiter: Waiter,
    lease: Lease,
    committed: oneshot::Receiver<()>,
    now_ms: i64,
) -> Result<bool, DbError> {
    let (session_id, lease_id) = (lease.session_id, lease.lease_id.clone());
    match waiter.tx.send(Wake::Lease(Box::new(lease), committed)) {
        Ok(()) => Ok(true),
        Err(_) => {
            leases::withdraw(conn, session_id, &lease_id, now_ms)?;
            Ok(false)
        }
    }
}

fn poller(want: &Want) -> leases::Poller<'_> {
    leases::Poller {
        robot_id: want.robot_id,
        name: &want.name,
        key_id: &want.key_id,
        instance_id: &want.instance_id,
        poll_id: &want.poll_id,
        poll_seq: want.poll_seq,
    }
}

/// How many times a poll looks at the queue before it waits while news
/// keeps coming (each look that finds nothing for it under a stream of
/// other robots' sessions costs a query; past this it waits, and the next
/// news that fits reaches it as an offer).
const MAX_LOOKS: u32 = 8;

pub struct Dispatcher {
    waiters: Mutex<Waiters>,
    /// Numbers this hub's polls, for their tokens.
    polls: AtomicU64,
    /// Counts sessions offered and slots freed on this hub (from its own
    /// requests or another hub's notices). A poll that found nothing reads
    /// it before it looks and again, under the waiters lock, before it
    /// waits: news in between may have found no waiter, so it looks
    /// again. (On SQLite the one connection already keeps the two apart.)
    news: AtomicU64,
    /// The other hubs of a PostgreSQL database.
    pub peers: Peers,
    /// A new lease lives this long unless the robot's next poll renews it.
    lease_ttl_ms: i64,
    /// Opens the secret params that a lease carries.
    master: Arc<MasterKey>,
}

impl Dispatcher {
    pub fn new(lease_ttl_ms: i64, master: Arc<MasterKey>) -> Dispatcher {
        Dispatcher {
            waiters: Mutex::default(),
            polls: AtomicU64::new(0),
            news: AtomicU64::new(0),
            peers: Peers::new(),
            lease_ttl_ms,
            master,
        }
    }

    /// Leases `session_id` to the robot of `want` in the database.
    fn grant(
        &self,
        conn: &mut Conn<'_>,
        session_id: i64,
        want: &Want,
    ) -> Result<Option<Lease>, DbError> {
        let lease_id = new_lease_id().map_err(|e| DbError::Task(e.to_string()))?;
        leases::grant(
            conn,
            session_id,
            &poller(want),
            &lease_id,
            &self.master,
            self.lease_ttl_ms,
        )
    }

    /// Leases the oldest session the robot of `want` may take to it.
    fn grant_next(
        &self,
        conn: &mut Conn<'_>,
        want: &Want,
        load: Load,
    ) -> Result<Option<Lease>, DbError> {
        let lease_id = new_lease_id().map_err(|e| DbError::Task(e.to_string()))?;
        leases::grant_next(
            conn,
            &poller(want),
            load,
            &lease_id,
            &self.master,
            self.lease_ttl_ms,
        )
    }

    /// A token for a poll that begins: this hub's and the poll's number.
    pub fn poll_token(&self) -> String {
        self.peers.token(self.polls.fetch_add(1, Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic elsewhere leaves the map consistent (each change is one
        // insert or remove), so a poisoned lock is still usable.
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A robot's poll found nothing to report: give it a session at once if
    /// one fits, or register it to wait.
    pub fn take_or_wait(&self, conn: &mut Conn<'_>, want: Want) -> Result<Poll, DbError> {
        let (tx, rx) = oneshot::channel();
        let mut waiter = Waiter {
            seq: 0,
            want,
            load: Load::default(),
            offers: Capabilities::default(),
            tx,
        };
        let mut looks = 0;
        let mut waiters =
            loop {
                looks += 1;
                let seen = self.news.load(Ordering::SeqCst);
                waiter.load = leases::load_of(conn, waiter.want.robot_id)?;
                if waiter.wants_work()
                    && let Some(lease) = self.grant_next(conn, &waiter.want, waiter.load)?
                {
                    return Ok(Poll::Leased(Box::new(lease)));
                }
                if looks == 1 {
                    // Gone meanwhile (deleted by an operator): nothing is
                    // offered to it, and grants check the robot anyway.
                    waiter.offers = robots::capabilities(conn, waiter.want.robot_id)?
                        .unwrap_or_else(|| Capabilities {
                            name: waiter.want.name.clone(),
                            actions: Some(Default::default()),
                            labels: Default::default(),
                        });
                }
                let waiters = self.lock();
                if waiters.closed {
                    return Ok(Poll::Closed);
                }
                // News since the look (another connection of the pool, or
                // another hub) found no waiter to give it to: look again.
                if self.news.load(Ordering::SeqCst) == seen || looks >= MAX_LOOKS {
                    break waiters;
                }
            };
        waiters.next_seq += 1;
        let seq = waiters.next_seq;
        let robot_id = waiter.want.robot_id;
        if let Some(old) = waiters.by_robot.insert(robot_id, Waiter { seq, ..waiter }) {
            let _ = old.tx.send(Wake::Replaced);
        }
        Ok(Poll::Wait { rx, seq })
    }

    /// A robot has one poll outstanding: a new one supersedes the
    /// registration of any older one (a poll the robot gave up, whose
    /// connection the hub may not have seen close yet), which must not be
    /// granted a session that nobody would receive; on another hub too.
    /// Called with the robot's row locked, at the start of every poll;
    /// `previous` is the token of the robot's poll before this one. Only
    /// a poll that hub made can be waiting elsewhere: a robot that stays
    /// on this hub tells no other.
    pub fn polled(
        &self,
        conn: &mut Conn<'_>,
        robot_id: i64,
        previous: Option<&str>,
        now_ms: i64,
    ) -> Result<(), DbError> {
        self.superseded_elsewhere(robot_id, now_ms);
        match previous {
            Some(token) if !self.peers.made(token) => {
                self.peers.tell(conn, Notice::Polled { robot_id })
            }
            _ => Ok(()),
        }
    }

    /// The robot polled another hub: its poll waiting here, if any, is
    /// answered empty.
    pub fn superseded_elsewhere(&self, robot_id: i64, now_ms: i64) {
        let mut waiters = self.lock();
        if let Some(old) = waiters.by_robot.remove(&robot_id) {
            waiters.answered_at.insert(robot_id, now_ms);
            let _ = old.tx.send(Wake::Replaced);
        }
    }

    /// Removes a registration whose poll timed out. False when it was
    /// already answered (its wake is then in the channel).
    pub fn forget(&self, robot_id: i64, seq: u64) -> bool {
        let mut waiters = self.lock();
        match waiters.by_robot.get(&robot_id) {
            Some(w) if w.seq == seq => {
                // A poll whose client hung up is not an answer.
                if !w.tx.is_closed() {
                    waiters.answered_at.insert(robot_id, crate::db::now_ms());
                }
                waiters.by_robot.remove(&robot_id);
                true
            }
            _ => false,
        }
    }

    /// Offers a session that has just become available to the robot that
    /// has waited longest among those that may take it, here or, when no
    /// robot waiting here took it, on another hub.
    pub fn offer(&self, conn: &mut Conn<'_>, session_id: i64, now_ms: i64) -> Result<(), DbError> {
        if !self.offer_here(conn, session_id, now_ms)? {
            self.peers.tell(conn, Notice::Queued { session_id })?;
        }
        Ok(())
    }

    /// [`Dispatcher::offer`] to the robots waiting on this hub only.
    /// Returns whether one took it.
    pub fn offer_here(
        &self,
        conn: &mut Conn<'_>,
        session_id: i64,
        now_ms: i64,
    ) -> Result<bool, DbError> {
        self.news.fetch_add(1, Ordering::SeqCst);
        let Some(needs) = leases::needs_of(conn, session_id)? else {
            return Ok(false);
        };
        loop {
            let Some((seq, want)) = self
                .lock()
                .by_robot
                .values()
                .filter(|w| w.may_take(&needs))
                .min_by_key(|w| w.seq)
                .map(|w| (w.seq, w.want.clone()))
            else {
                return Ok(false);
            };
            let offered = self.grant_and_deliver(conn, &want, seq, now_ms, |tx, load| {
                if !load.has_room(want.max_concurrency, needs.single_process) {
                    return Ok(None);
                }
                self.grant(tx, session_id, &want)
            })?;
            match offered {
                Offered::Granted { sent: true, .. } => return Ok(true),
                // The poll went away (its hold ran out, its client
                // disconnected): the offer was taken back; try the next
                // robot.
                Offered::Granted { sent: false, .. } => {}
                Offered::NotGranted if leases::needs_of(conn, session_id)?.is_none() => {
                    // Taken meanwhile; the waiter keeps waiting.
                    return Ok(false);
                }
                // The session is still there, so this poll may not have
                // it (the robot is no longer the poll's, or has no room
                // now), or it is not the robot's latest: it is answered
                // empty (its channel is dropped), and the next robot is
                // tried.
                Offered::NotGranted | Offered::Stale => {
                    self.take(want.robot_id, seq);
                }
            }
        }
    }

    /// Grants a session to the robot of the waiting poll `seq` (`grant`
    /// says which) and sends it down that poll, or takes it back if the
    /// poll has gone: one transaction with the robot's row locked, so that
    /// a poll the robot sends again meanwhile (the same poll id, on another
    /// connection or hub) either comes before the grant or finds the lease
    /// as it ended, never a lease taken back after it was handed over.
    /// `None` when nothing was granted.
    fn grant_and_deliver(
        &self,
        conn: &mut Conn<'_>,
        want: &Want,
        seq: u64,
        now_ms: i64,
        grant: impl FnOnce(&mut Conn<'_>, Load) -> Result<Option<Lease>, DbError>,
    ) -> Result<Offered, DbError> {
        let (commit_tx, committed) = oneshot::channel();
        let offered = conn.transaction(|tx| {
            robots::lock_row(tx, want.robot_id)?;
            // A poll of the robot that began since (here, or on a hub whose
            // notice has not arrived yet) is the one it reads: never grant
            // to an older one, which nobody may read.
            if !robots::is_latest_poll(tx, want.robot_id, &want.poll_token)? {
                return Ok(Offered::Stale);
            }
            // Its load as it is now, not as it was when the poll began.
            let load = leases::load_of(tx, want.robot_id)?;
            let Some(lease) = grant(tx, load)? else {
                return Ok(Offered::NotGranted);
            };
            let session_id = lease.session_id;
            let sent = self.deliver(tx, want.robot_id, seq, lease, committed, now_ms)?;
            Ok(Offered::Granted { session_id, sent })
        })?;
        // Committed: the poll may answer now. (On an error the sender is
        // dropped, and the poll answers that it should be sent again.)
        let _ = commit_tx.send(());
        if let Offered::Granted { sent: false, .. } = offered {
            // Back in the queue: a poll that looked while this grant held
            // the row (and passed over it) must look again.
            self.news.fetch_add(1, Ordering::SeqCst);
        }
        Ok(offered)
    }

    /// Removes the registration `seq` of `robot_id`, if it is still there.
    fn take(&self, robot_id: i64, seq: u64) -> Option<Waiter> {
        let mut waiters = self.lock();
        match waiters.by_robot.get(&robot_id) {
            Some(w) if w.seq == seq => waiters.by_robot.remove(&robot_id),
            _ => None,
        }
    }

    /// Sends a lease granted to registration `seq` down its poll; when that
    /// poll has gone meanwhile, takes the lease back and returns false.
    fn deliver(
        &self,
        conn: &mut Conn<'_>,
        robot_id: i64,
        seq: u64,
        lease: Lease,
        committed: oneshot::Receiver<()>,
        now_ms: i64,
    ) -> Result<bool, DbError> {
        match self.take(robot_id, seq) {
            Some(waiter) => {
                let sent = send_or_withdraw(conn, waiter, lease, committed, now_ms)?;
                if sent {
                    self.lock().answered_at.insert(robot_id, now_ms);
                }
                Ok(sent)
            }
            None => {
                leases::withdraw(conn, lease.session_id, &lease.lease_id, now_ms)?;
                Ok(false)
            }
        }
    }

    /// A robot's session ended (finished, or lost): the robot's slot is
    /// free ([`Dispatcher::slot_freed`]), and when its workflow has a
    /// concurrency limit, the oldest session waiting for that limit may
    /// start now, on any robot that may take it.
    pub fn session_ended(
        &self,
        conn: &mut Conn<'_>,
        robot_id: i64,
        session_id: i64,
        now_ms: i64,
    ) -> Result<(), DbError> {
        self.slot_freed(conn, robot_id, now_ms)?;
        self.offer_next_waiting(conn, session_id, now_ms)
    }

    /// A session that ran is over (ended, or taken back and cancelled):
    /// when its workflow has a concurrency limit, the oldest session
    /// waiting for that limit is offered to every robot that may take it.
    pub fn offer_next_waiting(
        &self,
        conn: &mut Conn<'_>,
        ended: i64,
        now_ms: i64,
    ) -> Result<(), DbError> {
        if let Some(next) = concurrency::next_waiting(conn, ended)? {
            self.offer(conn, next, now_ms)?;
        }
        Ok(())
    }

    /// A robot finished (or lost) a session: its waiting poll, which was
    /// registered while the session still held a slot, may now take
    /// another one, here or on the hub it waits on.
    pub fn slot_freed(
        &self,
        conn: &mut Conn<'_>,
        robot_id: i64,
        now_ms: i64,
    ) -> Result<(), DbError> {
        if !self.slot_freed_here(conn, robot_id, now_ms)? {
            self.peers.tell(conn, Notice::SlotFreed { robot_id })?;
        }
        Ok(())
    }

    /// [`Dispatcher::slot_freed`] for a poll waiting on this hub only.
    /// Returns whether one was.
    pub fn slot_freed_here(
        &self,
        conn: &mut Conn<'_>,
        robot_id: i64,
        now_ms: i64,
    ) -> Result<bool, DbError> {
        self.news.fetch_add(1, Ordering::SeqCst);
        let load = leases::load_of(conn, robot_id)?;
        let (seq, want) = {
            let mut waiters = self.lock();
            let Some(waiter) = waiters.by_robot.get_mut(&robot_id) else {
                return Ok(false);
            };
            if load.active < waiter.load.active {
                let freed = waiter.load.active - load.active;
                waiter.want.free_slots = waiter.want.free_slots.saturating_add(freed);
            }
            waiter.load = load;
            if !waiter.wants_work() {
                return Ok(true);
            }
            (waiter.seq, waiter.want.clone())
        };
        let offered = self.grant_and_deliver(conn, &want, seq, now_ms, |tx, load| {
            if !load.has_room(want.max_concurrency, false) {
                return Ok(None);
            }
            self.grant_next(tx, &want, load)
        })?;
        match offered {
            Offered::Granted {
                session_id,
                sent: false,
            } => {
                // That poll had gone: another robot may take the session.
                self.offer(conn, session_id, now_ms)?;
            }
            Offered::Stale => {
                self.take(robot_id, seq);
            }
            Offered::Granted { sent: true, .. } | Offered::NotGranted => {}
        }
        Ok(true)
    }

    /// A session the robot runs was asked to cancel: its waiting poll,
    /// here or on another hub, is answered so that it hears now.
    pub fn cancel(&self, conn: &mut Conn<'_>, robot_id: i64) -> Result<(), DbError> {
        if !self.wake(robot_id, Wake::Cancel) {
            self.peers.tell(conn, Notice::Cancel { robot_id })?;
        }
        Ok(())
    }

    /// Answers a robot's poll waiting on this hub, if one is. Returns
    /// whether one was.
    pub fn wake(&self, robot_id: i64, why: Wake) -> bool {
        let mut waiters = self.lock();
        match waiters.by_robot.remove(&robot_id) {
            Some(w) => {
                if w.tx.send(why).is_ok() {
                    waiters.answered_at.insert(robot_id, crate::db::now_ms());
                }
                true
            }
            None => false,
        }
    }

    /// Answers every waiting poll empty, as when its hold runs out: each
    /// robot polls again at once and looks afresh (`peers.rs`, after its
    /// listener missed notices). Returns how many were waiting.
    pub fn answer_all(&self) -> usize {
        let mut waiters = self.lock();
        let now = crate::db::now_ms();
        let robots: Vec<i64> = waiters.by_robot.keys().copied().collect();
        for robot_id in &robots {
            if let Some(w) = waiters.by_robot.remove(robot_id)
                && w.tx.send(Wake::Replaced).is_ok()
            {
                waiters.answered_at.insert(*robot_id, now);
            }
        }
        robots.len()
    }

    /// The robots whose poll waits here on a connection still open.
    pub fn waiting_robots(&self) -> Vec<i64> {
        self.lock()
            .by_robot
            .iter()
            .filter(|(_, w)| !w.tx.is_closed())
            .map(|(robot_id, _)| *robot_id)
            .collect()
    }

    /// What the hub knows of a robot's connection from its polls.
    pub fn contact(&self, robot_id: i64) -> Contact {
        let waiters = self.lock();
        Contact {
            waiting: waiters
                .by_robot
                .get(&robot_id)
                .is_some_and(|w| !w.tx.is_closed()),
            answered_at_ms: waiters.answered_at.get(&robot_id).copied(),
        }
    }

    /// Answers every waiting poll and refuses new waits: the hub is
    /// stopping.
    pub fn close(&self) {
        let mut waiters = self.lock();
        waiters.closed = true;
        for (_, w) in waiters.by_robot.drain() {
            let _ = w.tx.send(Wake::Shutdown);
        }
    }
}
