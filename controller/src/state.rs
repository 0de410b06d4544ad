//! The controller's state (tables, their index, the store, the latest deltas) and how requests
//! change it: group commit. One thread takes the requests in arrival order, plans each against
//! the tables as the ones before it left them, and persists all that queued up while the
//! previous batch was being written in one transaction, one fsync. Nothing of a batch is
//! answered, published to watchers or shown in a snapshot before that transaction is durable
//! (the state lock is held until then); if it fails, the batch is undone in memory and every
//! request in it fails. A panic while committing ends the process (see [`EXIT_PANICKED`]).
//! Also where a watch starts: a resume from the latest deltas, or a snapshot.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::Instant;

use tokio::sync::{broadcast, oneshot};
use tracing::{debug, error, warn};
use weft_proto::rows::RowChange;
use weft_proto::snapshot;
use weft_proto::tables::Tables;
use weft_proto::v1::{Delta, Resumed, WatchEvent, delta::Change, watch_event::Event};

use crate::index::Index;
use crate::metrics::METRICS;
use crate::rules::{TableError, View};
use crate::store::{Store, StoreError};

/// Requests planned and persisted together at most: bounds how long the state lock is held.
const MAX_BATCH: usize = 256;
/// How often a batch is planned again after another controller on the store committed first.
const MAX_REPLANS: usize = 8;
/// The controller's exit status after a panic while committing (EX_SOFTWARE). It exits rather
/// than serve on without a committer and with the state lock poisoned; a supervisor (systemd's
/// Restart=on-failure) starts it again from its store, which holds every answered change.
pub(crate) const EXIT_PANICKED: i32 = 70;
/// The controller's exit status when its store turns out to hold a commit it reported as failed,
/// or no longer holds the changes it needs to follow the other controllers (EX_IOERR).
pub(crate) const EXIT_DIVERGED: i32 = 74;

pub(crate) struct State {
    pub(crate) tables: Tables,
    pub(crate) index: Index,
    store: Store,
    /// The latest deltas, oldest first, for agents that reconnect and resume.
    history: VecDeque<WatchEvent>,
    /// The parts of the latest snapshot sent, while a watcher is still sending them: agents
    /// that start at the same revision share one copy of the tables.
    shared_snapshot: Weak<Vec<WatchEvent>>,
}

impl State {
    /// How many changes are kept for watchers that resume.
    pub(crate) fn history_len(&self) -> usize {
        self.history.len()
    }
}

/// The state and the channel its changes are published on, once durable.
pub(crate) struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<WatchEvent>,
}

/// Where a watch starts.
pub(crate) enum Start {
    /// The parts of a snapshot (see [`snapshot::parts`]).
    Snapshot(Arc<Vec<WatchEvent>>),
    /// `Resumed`, then the deltas the watcher missed.
    Resume(Vec<WatchEvent>),
}

impl Shared {
    pub(crate) fn new(
        mut store: Store,
        tables: Tables,
        events: broadcast::Sender<WatchEvent>,
    ) -> Shared {
        // Without it agents get snapshots, as from a controller that has just begun.
        let mut history = store.history(tables.revision).unwrap_or_else(|e| {
            warn!("cannot read the latest changes from the store: {e}");
            VecDeque::new()
        });
        // A store that kept more than it is told to keep now.
        let excess = history.len().saturating_sub(store.kept() as usize);
        history.drain(..excess);
        Shared {
            state: Mutex::new(State {
                index: Index::build(&tables),
                tables,
                store,
                history,
                shared_snapshot: Weak::new(),
            }),
            events,
        }
    }

    /// Brings the tables up to what other controllers on the store committed, publishing their
    /// changes to this controller's watchers, if the store is past `seen` (None: look).
    pub(crate) fn follow(&self, seen: Option<u64>) -> Result<usize, StoreError> {
        let mut state = self.lock();
        if seen.is_some_and(|revision| revision <= state.tables.revision) {
            return Ok(0);
        }
        follow(&mut state, &self.events)
    }

    /// The state as of the last durable change.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("controller state lock poisoned")
    }

    /// Where a watch from `from` (the watcher's revision, 0 for none) of store `store_id` (""
    /// for ours, or a watcher from before identities) starts, and a subscription to what comes
    /// after it.
    pub(crate) fn watch_from(
        &self,
        from: u64,
        store_id: &str,
    ) -> (Start, broadcast::Receiver<WatchEvent>) {
        let mut state = self.lock();
        let current = state.tables.revision;
        let oldest_kept = state.history.front().map_or(current + 1, |e| e.revision);
        // A revision of another store says nothing of ours: the watcher gets our snapshot, which
        // names our store, and decides whether to follow it.
        let ours = store_id.is_empty() || store_id == state.tables.store_id;
        if !ours {
            warn!(
                watcher_store = store_id,
                store = %state.tables.store_id,
                from,
                "watcher follows another store; sending a snapshot of this one"
            );
        }
        // Resumable when the watcher is not ahead of us (a controller that lost its store) and
        // every delta after its revision is still here.
        let start = if ours && from > 0 && from <= current && from + 1 >= oldest_kept {
            let missed: Vec<WatchEvent> = state
                .history
                .iter()
                .filter(|e| e.revision > from)
                .cloned()
                .collect();
            let mut start = vec![WatchEvent {
                revision: from,
                event: Some(Event::Resumed(Resumed {
                    missed: missed.len() as u64,
                })),
                store_id: state.tables.store_id.clone(),
            }];
            start.extend(missed);
            Start::Resume(start)
        } else {
            let parts = match state.shared_snapshot.upgrade() {
                Some(parts) if parts.first().map(|p| p.revision) == Some(current) => parts,
                _ => {
                    let parts = Arc::new(snapshot::parts(&state.tables));
                    state.shared_snapshot = Arc::downgrade(&parts);
                    parts
                }
            };
            Start::Snapshot(parts)
        };
        // Subscribed under the lock: no change is published between the start and the stream.
        (start, self.events.subscribe())
    }

    /// The changes published that the slowest watcher has yet to take.
    pub(crate) fn watch_backlog(&self) -> usize {
        self.events.len()
    }
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MutateError {
    #[error(transparent)]
    Rejected(#[from] TableError),
    /// Shared by every request of the batch that failed.
    #[error("persisting failed: {0}")]
    Persist(Arc<StoreError>),
    #[error("the controller is stopping")]
    Stopped,
}

/// Planned again if another controller commits first, so callable more than once.
type Plan = Box<dyn for<'a> FnMut(&View<'a>) -> Result<Vec<RowChange>, TableError> + Send>;

struct Job {
    plan: Plan,
    /// The revision the tables are at after this request's changes.
    done: oneshot::Sender<Result<u64, MutateError>>,
}

/// Hands requests to the committing thread. The thread ends when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct Committer {
    jobs: std_mpsc::Sender<Job>,
}

impl Committer {
    pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<Committer> {
        let (jobs, queue) = std_mpsc::channel();
        thread::Builder::new()
            .name("weft-commit".into())
            .spawn(move || {
                let run = panic::catch_unwind(AssertUnwindSafe(|| {
                    while let Ok(first) = queue.recv() {
                        let mut batch = vec![first];
                        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
                        commit_batch(&shared, batch, Store::commit);
                    }
                }));
                if let Err(panic) = run {
                    let why = panic
                        .downcast_ref::<&str>()
                        .copied()
                        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                        .unwrap_or("(no message)");
                    error!("committing panicked, exiting: {why}");
                    std::process::exit(EXIT_PANICKED);
                }
            })?;
        Ok(Committer { jobs })
    }

    /// Runs `plan` against the tables; persists and publishes the changes it returns. Returns
    /// the plan's result and the revision the tables are at after its changes.
    pub(crate) async fn mutate<T: Send + 'static>(
        &self,
        mut plan: impl FnMut(&View) -> Result<(T, Vec<RowChange>), TableError> + Send + 'static,
    ) -> Result<(T, u64), MutateError> {
        // The plan's result of the run that was committed: the last.
        let out = Arc::new(Mutex::new(None));
        let (done, result) = oneshot::channel();
        let plan: Plan = Box::new({
            let out = out.clone();
            move |view| {
                let (value, changes) = plan(view)?;
                *out.lock().expect("plan result lock") = Some(value);
                Ok(changes)
            }
        });
        self.jobs
            .send(Job { plan, done })
            .map_err(|_| MutateError::Stopped)?;
        let revision = result.await.map_err(|_| MutateError::Stopped)??;
        // Set before the plan returned its changes, so before `done`.
        let value = out.lock().expect("plan result lock").take();
        Ok((value.ok_or(MutateError::Stopped)?, revision))
    }
}

/// Plans the batch's requests in turn, makes their changes in memory, has `persist` write them
/// (all in one transaction, as [`Store::commit`] does), then publishes them and answers; undoes
/// them instead if `persist` fails. If another controller committed first, the batch is undone,
/// that controller's changes are followed, and the batch is planned again.
fn commit_batch(
    shared: &Shared,
    mut batch: Vec<Job>,
    mut persist: impl FnMut(&mut Store, &[Change], u64) -> Result<(), StoreError>,
) {
    let mut guard = shared.lock();
    let state = &mut *guard;
    // Its caller gave up (a gRPC deadline, a client that went away) while it queued: nobody
    // would learn of the change, and the caller may be retrying it already.
    batch.retain(|job| !job.done.is_closed());
    let mut replans = 0;
    let outcomes = loop {
        let start = state.tables.revision;
        let (undo, changed, mut outcomes) = plan(state, &mut batch);
        if changed.is_empty() {
            break outcomes;
        }
        let writing = Instant::now();
        let persisted = persist(&mut state.store, &changed, state.tables.revision);
        let result = match &persisted {
            Ok(()) => "ok",
            Err(StoreError::Moved { .. } | StoreError::Turn { .. }) => "beaten",
            Err(_) => "failed",
        };
        METRICS.committed(result, batch.len(), writing.elapsed());
        let Err(e) = persisted else {
            crate::failpoint::after_persist();
            publish(state, &shared.events, start, changed);
            state.store.settle(&state.tables);
            break outcomes;
        };
        for change in undo.into_iter().rev() {
            state.index.apply(&state.tables, &change);
            state.tables.apply(change);
        }
        state.tables.revision = start;
        let e = match e {
            StoreError::Moved { .. } | StoreError::Turn { waited: false, .. }
                if replans < MAX_REPLANS =>
            {
                replans += 1;
                debug!(
                    requests = batch.len(),
                    replans, "{e}; following it, planning again"
                );
                let followed = state
                    .store
                    .take_turn()
                    .and_then(|()| follow(state, &shared.events));
                match followed {
                    Ok(_) => {
                        // A caller that gave up while the batch was beaten (the store was slow
                        // to answer) would not learn of its change.
                        batch.retain(|job| !job.done.is_closed());
                        continue;
                    }
                    Err(e) => e,
                }
            }
            e => e,
        };
        if matches!(e, StoreError::Diverged { .. } | StoreError::Outrun { .. }) {
            // Serving on would answer from tables behind the store's: stop, and let the
            // supervisor start the controller again from what the store holds.
            error!("{e}");
            std::process::exit(EXIT_DIVERGED);
        }
        warn!(requests = outcomes.len(), "persisting failed: {e}");
        let e = Arc::new(e);
        // Refusals too: one may be due to an earlier request of the batch, now undone.
        for outcome in &mut outcomes {
            *outcome = Err(MutateError::Persist(e.clone()));
        }
        break outcomes;
    };
    state.store.end_turn();
    drop(guard);
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        // A caller that gave up is no reason to stop.
        let _ = job.done.send(outcome);
    }
}

/// Plans each request of the batch against the tables as those before it left them, and makes
/// its changes in memory. Returns how to undo them, their wire form, and each request's outcome.
fn plan(
    state: &mut State,
    batch: &mut [Job],
) -> (Vec<RowChange>, Vec<Change>, Vec<Result<u64, MutateError>>) {
    let mut undo = Vec::new();
    let mut changed = Vec::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in batch {
        let view = View {
            tables: &state.tables,
            index: &state.index,
        };
        let outcome = (job.plan)(&view).map(|changes| {
            for change in changes {
                undo.push(state.tables.undo(&change));
                state.index.apply(&state.tables, &change);
                // The wire form, once: what is stored and what watchers get.
                changed.push(change.wire());
                state.tables.apply(change);
            }
            state.tables.revision
        });
        outcomes.push(outcome.map_err(MutateError::from));
    }
    (undo, changed, outcomes)
}

/// Applies and publishes what other controllers on the store committed since this one last
/// committed or followed. Returns how many changes that was.
fn follow(state: &mut State, events: &broadcast::Sender<WatchEvent>) -> Result<usize, StoreError> {
    let start = state.tables.revision;
    let rows = state.store.catch_up()?;
    let mut changed = Vec::with_capacity(rows.len());
    for change in rows {
        state.index.apply(&state.tables, &change);
        changed.push(change.wire());
        state.tables.apply(change);
    }
    let n = changed.len();
    publish(state, events, start, changed);
    Ok(n)
}

/// Records the batch's changes, numbered from `start` + 1, as deltas for resuming agents, and
/// sends them to the watchers.
fn publish(
    state: &mut State,
    events: &broadcast::Sender<WatchEvent>,
    start: u64,
    changed: Vec<Change>,
) {
    for (revision, change) in (start + 1..).zip(changed) {
        let event = WatchEvent {
            revision,
            event: Some(Event::Delta(Delta {
                change: Some(change),
            })),
            store_id: String::new(),
        };
        state.history.push_back(event.clone());
        if state.history.len() as u64 > state.store.kept() {
            state.history.pop_front();
        }
        // No receivers is fine: nobody is watching yet.
        let _ = events.send(event);
    }
}

#[cfg(test)]
mod tests {
    use futures::future::join_all;
    use weft_proto::v1::Peer;

    use weft_proto::names::Mac;

    use super::*;
    use crate::rules::{AttachOptions, TableRules};
    use crate::store::Emptied;

    fn peer(n: usize) -> Peer {
        Peer {
            name: format!("host{n}"),
            advertise_addr: format!("198.18.0.{n}"),
            ..Default::default()
        }
    }

    fn shared(dir: &std::path::Path) -> Shared {
        let (store, tables) = Store::open(dir, Emptied::Refuse).unwrap();
        Shared::new(store, tables, broadcast::channel(1024).0)
    }

    type Answer = oneshot::Receiver<Result<u64, MutateError>>;

    /// A request that makes the changes `plan` returns, and where its answer comes.
    fn job(
        plan: impl for<'a> FnMut(&View<'a>) -> Result<Vec<RowChange>, TableError> + Send + 'static,
    ) -> (Job, Answer) {
        let (done, answer) = oneshot::channel();
        let plan: Plan = Box::new(plan);
        (Job { plan, done }, answer)
    }

    /// A request that registers `peer`.
    fn register(peer: Peer) -> (Job, Answer) {
        job(move |view| view.register_peer(peer.clone()))
    }

    /// A request that attaches `container` on host1 with `addr`.
    fn attach(container: &'static str, addr: &'static str) -> (Job, Answer) {
        job(move |view| {
            let specs = [addr.parse().unwrap()];
            let (_, changes) = view.attach(
                "host1",
                container,
                &specs,
                AttachOptions::default(),
                &mut Mac::random,
            )?;
            Ok(changes)
        })
    }

    /// Commits `jobs` as one batch; returns their answers.
    fn commit(
        shared: &Shared,
        jobs: Vec<(Job, Answer)>,
        persist: impl FnMut(&mut Store, &[Change], u64) -> Result<(), StoreError>,
    ) -> Vec<Result<u64, MutateError>> {
        let (batch, answers): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
        commit_batch(shared, batch, persist);
        answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap())
            .collect()
    }

    /// Commits the default network, host1 and an endpoint on it for each of `containers`.
    fn set_up(shared: &Shared, containers: &[&'static str]) {
        let range = "10.32.0.0/12".parse().unwrap();
        let mut setup = vec![
            job(move |view| view.ensure_default_network(range, None, false)),
            register(peer(1)),
        ];
        setup.extend(containers.iter().map(|c| attach(c, "net:default")));
        assert!(
            commit(shared, setup, Store::commit)
                .iter()
                .all(Result::is_ok)
        );
    }

    #[test]
    fn a_batch_that_cannot_be_persisted_is_undone_and_fails_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        set_up(&shared, &["c0", "c1"]);
        let (tables, index) = {
            let state = shared.lock();
            (state.tables.clone(), state.index.clone())
        };
        let c0 = "10.32.0.2/12";
        assert_eq!(
            tables.endpoints.values().next().unwrap().cidrs,
            [c0.parse().unwrap()]
        );
        let mut watcher = shared.events.subscribe();

        let batch = vec![
            // Allocates an address, a MAC and a veth name.
            attach("c2", "net:default"),
            // Releases c0's address, which the next request takes.
            job(|view| Ok(view.detach("host1", "c0", &[], "")?.1)),
            attach("c3", c0),
            // Refused only because c3 took the address earlier in the batch.
            attach("c4", c0),
        ];
        let disk_full = || StoreError::File {
            doing: "write",
            path: dir.path().to_path_buf(),
            cause: std::io::Error::other("disk full"),
        };
        let answers = commit(&shared, batch, |_, _, _| Err(disk_full()));
        for answer in &answers {
            let Err(e @ MutateError::Persist(_)) = answer else {
                panic!("every request fails to persist, not {answer:?}");
            };
            assert!(e.to_string().contains("disk full"), "{e}");
        }
        {
            let state = shared.lock();
            assert_eq!(state.tables, tables);
            // The address pools (IPAM), MACs, veth names and containers as before.
            assert_eq!(state.index, index);
            assert_eq!(state.index, Index::build(&state.tables));
        }
        assert!(watcher.try_recv().is_err(), "nothing undone is published");

        // The next batch goes on from the revision before the failed one.
        let answers = commit(&shared, vec![attach("c5", "net:default")], Store::commit);
        assert_eq!(answers[0].as_ref().unwrap(), &(tables.revision + 1));
        assert_eq!(watcher.try_recv().unwrap().revision, tables.revision + 1);
    }

    #[test]
    fn a_batch_another_controller_beat_is_planned_again_then_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        set_up(&shared, &[]);
        let before = shared.lock().tables.revision;
        let moved = |held| StoreError::Moved {
            path: dir.path().to_path_buf(),
            held,
            expected: before,
        };
        let mut watcher = shared.events.subscribe();

        // Beaten once: the batch is undone, planned again from the same tables, and lands once.
        let mut tries = 0;
        let answers = commit(
            &shared,
            vec![attach("c0", "net:default")],
            |store, changes, at| {
                tries += 1;
                if tries == 1 {
                    return Err(moved(before + 1));
                }
                store.commit(changes, at)
            },
        );
        assert_eq!(tries, 2);
        assert_eq!(answers[0].as_ref().unwrap(), &(before + 1));
        assert_eq!(watcher.try_recv().unwrap().revision, before + 1);
        assert!(
            watcher.try_recv().is_err(),
            "the first plan is not published"
        );
        {
            let state = shared.lock();
            assert_eq!(state.tables.endpoints.len(), 1);
            assert_eq!(state.index, Index::build(&state.tables));
        }

        // Beaten every time: the requests fail naming why, and nothing changed.
        let tables = shared.lock().tables.clone();
        let mut tries = 0;
        let answers = commit(&shared, vec![attach("c1", "net:default")], |_, _, _| {
            tries += 1;
            Err(moved(before + 9))
        });
        assert_eq!(tries, MAX_REPLANS + 1);
        let Err(e @ MutateError::Persist(_)) = &answers[0] else {
            panic!("the request fails to persist, not {:?}", answers[0]);
        };
        assert!(
            e.to_string().contains("another controller committed first"),
            "{e}"
        );
        assert_eq!(shared.lock().tables, tables);
        assert!(watcher.try_recv().is_err());
    }

    #[test]
    fn a_beaten_request_whose_caller_gave_up_meanwhile_is_not_planned_again() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        set_up(&shared, &[]);
        let before = shared.lock().tables.revision;
        let (abandoned, mut gone) = attach("c0", "net:default");
        let (wanted, answer) = attach("c1", "net:default");
        let mut planned = Vec::new();
        commit_batch(&shared, vec![abandoned, wanted], |store, changes, at| {
            planned.push(changes.len());
            if planned.len() == 1 {
                // The caller's deadline passes while the store is slow to say it was beaten.
                gone.close();
                return Err(StoreError::Moved {
                    path: dir.path().to_path_buf(),
                    held: before,
                    expected: before,
                });
            }
            store.commit(changes, at)
        });
        assert_eq!(planned, [2, 1], "changes planned at each try");
        assert_eq!(answer.blocking_recv().unwrap().unwrap(), before + 1);
        let state = shared.lock();
        let held: Vec<&str> = state
            .tables
            .endpoints
            .values()
            .map(|ep| ep.id.container.as_str())
            .collect();
        assert_eq!(held, ["c1"]);
    }

    #[test]
    fn only_a_watcher_of_this_store_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let answers = commit(
            &shared,
            vec![register(peer(1)), register(peer(2))],
            Store::commit,
        );
        assert!(answers.iter().all(Result::is_ok));
        let ours = shared.lock().tables.store_id.clone();
        for same in [ours.as_str(), ""] {
            let (Start::Resume(events), _) = shared.watch_from(1, same) else {
                panic!("a watcher of this store ({same:?}) at revision 1 gets a snapshot");
            };
            assert_eq!(events.len(), 2, "Resumed and the one delta missed");
            assert_eq!(events[0].revision, 1);
            assert_eq!(events[0].store_id, ours);
            assert!(matches!(events[0].event, Some(Event::Resumed(_))));
        }
        let other = "0123456789abcdef0123456789abcdef";
        let (Start::Snapshot(parts), _) = shared.watch_from(1, other) else {
            panic!("a watcher of another store resumes");
        };
        assert_eq!(parts[0].revision, 2);
        assert_eq!(parts[0].store_id, ours);
        let Some(Event::Snapshot(snapshot)) = &parts[0].event else {
            panic!("not a snapshot: {:?}", parts[0]);
        };
        assert_eq!(snapshot.peers.len(), 2);
    }

    #[test]
    fn requests_whose_caller_has_gone_are_not_made() {
        let dir = tempfile::tempdir().unwrap();
        let shared = shared(dir.path());
        let (abandoned, gone) = register(peer(1));
        drop(gone);
        let (wanted, answer) = register(peer(2));
        commit_batch(&shared, vec![abandoned, wanted], Store::commit);
        assert_eq!(answer.blocking_recv().unwrap().unwrap(), 1);
        let state = shared.lock();
        assert_eq!(state.tables.peers.keys().collect::<Vec<_>>(), ["host2"]);
    }

    /// Set in the child process of the test below.
    const PANIC_IN_PLAN: &str = "WEFT_TEST_PANIC_IN_PLAN";

    #[test]
    fn a_panic_while_committing_ends_the_process() {
        if std::env::var_os(PANIC_IN_PLAN).is_some() {
            let dir = tempfile::tempdir().unwrap();
            let (store, tables) = Store::open(dir.path(), Emptied::Refuse).unwrap();
            let shared = Arc::new(Shared::new(store, tables, broadcast::channel(1).0));
            let committer = Committer::start(shared).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let result = runtime.block_on(
                committer.mutate(|_| -> Result<((), _), _> { panic!("a plan that panics") }),
            );
            // Not reached if the process exits as it should.
            panic!("the controller goes on after a panic while committing: {result:?}");
        }
        let test = "state::tests::a_panic_while_committing_ends_the_process";
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(PANIC_IN_PLAN, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_PANICKED), "stderr: {stderr}");
        assert!(stderr.contains("a plan that panics"), "stderr: {stderr}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_each_get_their_own_revision_and_all_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, tables) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        let (events, mut watcher) = broadcast::channel(1024);
        let shared = Arc::new(Shared::new(store, tables, events));
        let committer = Committer::start(shared.clone()).unwrap();
        let requests = (1..=100).map(|n| {
            let committer = committer.clone();
            async move {
                committer
                    .mutate(move |t| {
                        // Every tenth names no peer: refused, and no hindrance to the others.
                        let p = if n % 10 == 0 {
                            Peer::default()
                        } else {
                            peer(n)
                        };
                        Ok((n, t.register_peer(p)?))
                    })
                    .await
            }
        });
        let results = join_all(requests).await;
        let mut revisions: Vec<u64> = Vec::new();
        for (i, result) in results.into_iter().enumerate() {
            let n = i + 1;
            match result {
                Ok((out, revision)) => {
                    assert_eq!(out, n);
                    assert_ne!(n % 10, 0, "request {n} should have been refused");
                    revisions.push(revision);
                }
                Err(MutateError::Rejected(TableError::Invalid(_))) => assert_eq!(n % 10, 0),
                Err(e) => panic!("request {n}: {e}"),
            }
        }
        revisions.sort();
        assert_eq!(revisions, (1..=90).collect::<Vec<u64>>());
        for revision in 1..=90 {
            let event = watcher.try_recv().expect("every change is published");
            assert_eq!(event.revision, revision);
        }
        let held = shared.lock().tables.clone();
        assert_eq!(held.peers.len(), 90);
        // The committing thread ends, and lets go of the store, once the last committer is gone.
        drop(committer);
        for _ in 0..500 {
            if Arc::strong_count(&shared) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        drop(shared);
        let (_, reloaded) = Store::open(dir.path(), Emptied::Refuse).unwrap();
        assert_eq!(reloaded, held);
    }
}
