//! The match queue: who waits for a partner, in which order, and which two guests may not be
//! paired. Self-contained: it knows nothing of sockets, rooms, outputs or timers; the core tells
//! it what happened (a guest asks, cancels, goes away, comes back, a chat ends, a cooldown's
//! time came) and opens a room for every pair it hands back.
//!
//! The API is shaped so that a cluster-wide implementation (a queue in Redis) can mirror it
//! call for call: every call is one atomic step on the queue, takes the time it happens at,
//! and returns the pairs it formed.
//!
//! Rules:
//! - Oldest first: a guest is paired with the guest that has waited longest.
//! - Interests preferred: a guest with interests is paired with the longest-waiting guest who
//!   shares one of them, and only if there is none, with the longest-waiting guest at all.
//! - Only present guests (with a connected socket) are paired; an away guest keeps its place.
//! - Re-pair cooldown: two guests whose chat ended are not paired again within `cooldown`.
//! - Never after a report: two guests whose chat ended with a report are never paired again
//!   (a guest remembers its newest [`MAX_BLOCKS_PER_GUEST`] such pairs; the oldest is
//!   forgotten past that).
//!
//! Invariants (checked by the property test below):
//! - No guest paired twice: a pair takes both guests out of the queue, so a guest is in at most
//!   one pair until it is queued again.
//! - None lost: a queued guest stays queued, in its place, until it is paired, cancelled or
//!   forgotten.
//! - Pairs are formed only inside a call and returned by it: after every call no two present
//!   queued guests could be paired, provided the caller calls [`Matchmaker::cooldown_over`] at
//!   every instant [`Matchmaker::ended`] returned.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ids::SessionId;
use crate::SignalError;

/// Reports (and cooldowns) remembered per guest; the oldest is forgotten past this.
pub(crate) const MAX_BLOCKS_PER_GUEST: usize = 1024;

/// A guest asking for a partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) id: SessionId,
    /// Validated interest tags; a partner sharing one is preferred.
    pub(crate) interests: Vec<String>,
    /// Has a connected socket. An away guest keeps its place but is not paired.
    pub(crate) present: bool,
}

/// Two guests paired, both taken out of the queue: `[seeker, partner]`, the seeker being the
/// guest whose call found the match (the one that asked, came back, or whose cooldown ended)
/// and the partner the one that was waiting for it.
pub(crate) type Pair = [SessionId; 2];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Until(Instant),
    Forever,
}

struct Waiting {
    id: SessionId,
    interests: Vec<String>,
    present: bool,
}

/// The queue of guests waiting for a partner, and the pairs that may not be formed.
pub(crate) struct Matchmaker {
    /// Waiting guests by the order they asked.
    queue: BTreeMap<u64, Waiting>,
    /// Each waiting guest's place in `queue`.
    place: HashMap<SessionId, u64>,
    next_seq: u64,
    /// Pairs (smaller id first) not to be formed, until a time or forever.
    blocks: HashMap<(SessionId, SessionId), Block>,
    /// The other guest of each of a guest's blocks, oldest first (only guests with one).
    blocked_with: HashMap<SessionId, VecDeque<SessionId>>,
    cooldown: Duration,
    max_blocks: usize,
}

impl Matchmaker {
    pub(crate) fn new(cooldown: Duration, max_blocks_per_guest: usize) -> Self {
        Self {
            queue: BTreeMap::new(),
            place: HashMap::new(),
            next_seq: 0,
            blocks: HashMap::new(),
            blocked_with: HashMap::new(),
            cooldown,
            max_blocks: max_blocks_per_guest.max(1),
        }
    }

    /// Queues `entry` behind everyone waiting and pairs it if it can be paired now. Refused
    /// with `already_searching` if the guest is queued already (nothing changes).
    pub(crate) fn enqueue(
        &mut self,
        entry: Entry,
        now: Instant,
    ) -> Result<Option<Pair>, SignalError> {
        let Entry {
            id,
            interests,
            present,
        } = entry;
        if self.place.contains_key(&id) {
            return Err(SignalError::AlreadySearching);
        }
        // Paired at once, it never waits (it would be last in the queue, and skipped by its
        // own search).
        if present {
            if let Some(partner) = self.best_partner(id, &interests, now) {
                return Ok(self.take(partner).map(|partner| [id, partner]));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.place.insert(id, seq);
        let waiting = Waiting {
            id,
            interests,
            present,
        };
        self.queue.insert(seq, waiting);
        Ok(None)
    }

    /// Takes `id` out of the queue; false if it was not queued.
    pub(crate) fn cancel(&mut self, id: SessionId) -> bool {
        match self.place.remove(&id) {
            Some(seq) => self.queue.remove(&seq).is_some(),
            None => false,
        }
    }

    /// A queued guest lost its last socket: it keeps its place but is not paired.
    pub(crate) fn set_away(&mut self, id: SessionId) {
        if let Some(w) = self.waiting_mut(id) {
            w.present = false;
        }
    }

    /// A queued guest is back: paired at once if it can be. Nothing for a guest not queued.
    pub(crate) fn set_present(&mut self, id: SessionId, now: Instant) -> Option<Pair> {
        self.waiting_mut(id)?.present = true;
        self.try_pair(id, now)
    }

    /// The chat of `actor` and `other` ended (`reported`: `actor` reported `other`). They are
    /// not paired again: forever after a report, else until the returned instant, at which the
    /// caller calls [`Matchmaker::cooldown_over`] with the same two guests.
    pub(crate) fn ended(
        &mut self,
        actor: SessionId,
        other: SessionId,
        reported: bool,
        now: Instant,
    ) -> Option<Instant> {
        let (block, until) = if reported {
            (Block::Forever, None)
        } else {
            let until = now + self.cooldown;
            (Block::Until(until), Some(until))
        };
        let key = pair_key(actor, other);
        if self.blocks.get(&key) != Some(&Block::Forever)
            && self.blocks.insert(key, block).is_none()
        {
            for (me, them) in [(actor, other), (other, actor)] {
                let list = self.blocked_with.entry(me).or_default();
                list.push_back(them);
                if list.len() > self.max_blocks {
                    if let Some(oldest) = list.pop_front() {
                        self.blocks.remove(&pair_key(me, oldest));
                        // Forget it on the other side too, or a stale entry there would later
                        // evict a newer block between the same two guests.
                        self.unlist(oldest, me);
                    }
                }
            }
        }
        until
    }

    /// The instant [`Matchmaker::ended`] returned for `a` and `b` has come: unless they were
    /// blocked again since (until later, or forever), they may be paired again, and each of them
    /// that waits is paired if it can be now (`a` first).
    pub(crate) fn cooldown_over(
        &mut self,
        a: SessionId,
        b: SessionId,
        now: Instant,
    ) -> [Option<Pair>; 2] {
        let key = pair_key(a, b);
        match self.blocks.get(&key) {
            Some(Block::Until(t)) if *t <= now => {}
            _ => return [None, None],
        }
        self.blocks.remove(&key);
        self.unlist(a, b);
        self.unlist(b, a);
        // Two guests who were only waiting for each other can pair now.
        let first = self.try_pair(a, now);
        [first, self.try_pair(b, now)]
    }

    /// The guest is gone for good: out of the queue, and every block it had is dropped.
    pub(crate) fn forget(&mut self, id: SessionId) {
        self.cancel(id);
        for other in self.blocked_with.remove(&id).unwrap_or_default() {
            self.blocks.remove(&pair_key(id, other));
            self.unlist(other, id);
        }
    }

    #[cfg(test)]
    pub(crate) fn is_queued(&self, id: SessionId) -> bool {
        self.place.contains_key(&id)
    }

    /// May `a` and `b` not be paired at `now`?
    pub(crate) fn is_blocked(&self, a: SessionId, b: SessionId, now: Instant) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        match self.blocks.get(&pair_key(a, b)) {
            Some(Block::Forever) => true,
            Some(Block::Until(t)) => *t > now,
            None => false,
        }
    }

    /// The waiting guests, longest-waiting first.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.queue.values().map(|w| w.id)
    }

    /// Guests waiting.
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Pairs blocked (until a time or forever).
    pub(crate) fn blocks_len(&self) -> usize {
        self.blocks.len()
    }

    fn waiting_mut(&mut self, id: SessionId) -> Option<&mut Waiting> {
        let seq = self.place.get(&id)?;
        self.queue.get_mut(seq)
    }

    /// Takes `them` off `me`'s list of blocks.
    fn unlist(&mut self, me: SessionId, them: SessionId) {
        if let Some(list) = self.blocked_with.get_mut(&me) {
            list.retain(|x| *x != them);
            if list.is_empty() {
                self.blocked_with.remove(&me);
            }
        }
    }

    /// Pairs the queued, present guest `id` with its best waiting partner, if any.
    fn try_pair(&mut self, id: SessionId, now: Instant) -> Option<Pair> {
        let seq = *self.place.get(&id)?;
        let me = self.queue.get(&seq)?;
        if !me.present {
            return None;
        }
        let partner = self.best_partner(id, &me.interests, now)?;
        let partner = self.take(partner)?;
        self.queue.remove(&seq);
        self.place.remove(&id);
        Some([id, partner])
    }

    /// The place of the best partner for `id` with interests `mine`: the longest-waiting
    /// present guest it may be paired with, preferring one sharing an interest.
    fn best_partner(&self, id: SessionId, mine: &[String], now: Instant) -> Option<u64> {
        let mut first: Option<u64> = None;
        for (&seq, other) in &self.queue {
            if other.id == id || !other.present || self.is_blocked(id, other.id, now) {
                continue;
            }
            if mine.is_empty() {
                return Some(seq);
            }
            first.get_or_insert(seq);
            if other.interests.iter().any(|t| mine.contains(t)) {
                return Some(seq);
            }
        }
        first
    }

    /// Takes the guest at `seq` out of the queue.
    fn take(&mut self, seq: u64) -> Option<SessionId> {
        let id = self.queue.remove(&seq)?.id;
        self.place.remove(&id);
        Some(id)
    }
}

/// A block's key: the two guests, smaller id first.
fn pair_key(a: SessionId, b: SessionId) -> (SessionId, SessionId) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    const COOLDOWN: Duration = Duration::from_secs(300);

    fn g(n: u128) -> SessionId {
        SessionId::from_raw(n)
    }

    fn entry(n: u128, interests: &[&str]) -> Entry {
        Entry {
            id: g(n),
            interests: interests.iter().map(|t| (*t).to_owned()).collect(),
            present: true,
        }
    }

    fn mm() -> Matchmaker {
        Matchmaker::new(COOLDOWN, MAX_BLOCKS_PER_GUEST)
    }

    fn queued(m: &Matchmaker) -> Vec<SessionId> {
        m.queued().collect()
    }

    #[test]
    fn two_guests_pair_and_leave_the_queue() {
        let t0 = Instant::now();
        let mut m = mm();
        assert_eq!(m.enqueue(entry(1, &[]), t0), Ok(None));
        assert!(m.is_queued(g(1)));
        assert_eq!(m.enqueue(entry(2, &[]), t0), Ok(Some([g(2), g(1)])));
        assert_eq!(m.len(), 0);
        assert!(!m.is_queued(g(1)) && !m.is_queued(g(2)));
    }

    #[test]
    fn queued_twice_is_refused() {
        let t0 = Instant::now();
        let mut m = mm();
        m.set_away(g(1));
        assert_eq!(m.enqueue(entry(1, &[]), t0), Ok(None));
        assert_eq!(
            m.enqueue(entry(1, &["x"]), t0),
            Err(SignalError::AlreadySearching)
        );
        assert_eq!(queued(&m), [g(1)]);
    }

    #[test]
    fn cancel_leaves_the_queue() {
        let t0 = Instant::now();
        let mut m = mm();
        m.enqueue(entry(1, &[]), t0).unwrap();
        assert!(m.cancel(g(1)));
        assert!(!m.cancel(g(1)));
        assert_eq!(m.enqueue(entry(2, &[]), t0), Ok(None));
        assert_eq!(queued(&m), [g(2)]);
    }

    #[test]
    fn the_longest_waiting_guest_is_taken() {
        let t0 = Instant::now();
        let mut m = mm();
        // 1 and 2 may not meet, so both wait.
        m.ended(g(1), g(2), true, t0);
        m.enqueue(entry(1, &[]), t0).unwrap();
        m.enqueue(entry(2, &[]), t0).unwrap();
        assert_eq!(m.enqueue(entry(3, &[]), t0), Ok(Some([g(3), g(1)])));
        assert_eq!(queued(&m), [g(2)]);
    }

    #[test]
    fn a_shared_interest_beats_waiting_time_and_the_oldest_sharer_wins() {
        let t0 = Instant::now();
        let mut m = mm();
        m.ended(g(1), g(2), true, t0);
        m.ended(g(1), g(3), true, t0);
        m.ended(g(2), g(3), true, t0);
        m.enqueue(entry(1, &["chess"]), t0).unwrap();
        m.enqueue(entry(2, &["go", "music"]), t0).unwrap();
        m.enqueue(entry(3, &["music"]), t0).unwrap();
        assert_eq!(
            m.enqueue(entry(4, &["music", "films"]), t0),
            Ok(Some([g(4), g(2)]))
        );
        // Nobody shares "films": the longest-waiting guest.
        assert_eq!(m.enqueue(entry(5, &["films"]), t0), Ok(Some([g(5), g(1)])));
        assert_eq!(queued(&m), [g(3)]);
    }

    #[test]
    fn a_guest_without_interests_takes_the_oldest_whatever_its_interests() {
        let t0 = Instant::now();
        let mut m = mm();
        m.ended(g(1), g(2), true, t0);
        m.enqueue(entry(1, &["a"]), t0).unwrap();
        m.enqueue(entry(2, &[]), t0).unwrap();
        assert_eq!(m.enqueue(entry(3, &[]), t0), Ok(Some([g(3), g(1)])));
    }

    #[test]
    fn away_guests_keep_their_place_and_pair_when_back() {
        let t0 = Instant::now();
        let mut m = mm();
        m.enqueue(entry(1, &[]), t0).unwrap();
        m.set_away(g(1));
        assert_eq!(m.enqueue(entry(2, &[]), t0), Ok(None));
        assert_eq!(queued(&m), [g(1), g(2)]);
        // An away newcomer is not paired either.
        let mut away = entry(3, &[]);
        away.present = false;
        assert_eq!(m.enqueue(away, t0), Ok(None));
        assert_eq!(m.set_present(g(1), t0), Some([g(1), g(2)]));
        assert_eq!(queued(&m), [g(3)]);
        // Coming back when not queued pairs nobody.
        assert_eq!(m.set_present(g(9), t0), None);
    }

    #[test]
    fn cooldown_blocks_the_two_until_it_is_over() {
        let t0 = Instant::now();
        let mut m = mm();
        assert_eq!(m.ended(g(1), g(2), false, t0), Some(t0 + COOLDOWN));
        m.enqueue(entry(1, &[]), t0).unwrap();
        assert_eq!(m.enqueue(entry(2, &[]), t0), Ok(None));
        assert!(m.is_blocked(g(2), g(1), t0 + COOLDOWN - Duration::from_millis(1)));
        assert!(!m.is_blocked(g(2), g(1), t0 + COOLDOWN));
        // Early: nothing.
        assert_eq!(
            m.cooldown_over(g(1), g(2), t0 + Duration::from_secs(1)),
            [None, None]
        );
        assert_eq!(
            m.cooldown_over(g(1), g(2), t0 + COOLDOWN),
            [Some([g(1), g(2)]), None]
        );
        assert_eq!(m.blocks_len(), 0);
        // Others are not blocked by it.
        assert!(!m.is_blocked(g(1), g(3), t0));
    }

    #[test]
    fn a_later_end_extends_the_cooldown_and_a_report_is_forever() {
        let t0 = Instant::now();
        let mut m = mm();
        let first = m.ended(g(1), g(2), false, t0).unwrap();
        let later = t0 + Duration::from_secs(10);
        let second = m.ended(g(2), g(1), false, later).unwrap();
        assert_eq!(m.cooldown_over(g(1), g(2), first), [None, None]);
        assert!(m.is_blocked(g(1), g(2), first));
        m.cooldown_over(g(2), g(1), second);
        assert!(!m.is_blocked(g(1), g(2), second));

        assert_eq!(m.ended(g(1), g(2), true, t0), None);
        // A later cooldown does not shorten a report.
        let until = m.ended(g(1), g(2), false, later).unwrap();
        m.cooldown_over(g(1), g(2), until);
        assert!(m.is_blocked(g(1), g(2), until + Duration::from_secs(1_000_000)));
        assert_eq!(m.blocks_len(), 1);
    }

    #[test]
    fn the_oldest_block_is_forgotten_on_both_sides() {
        let t0 = Instant::now();
        let mut m = Matchmaker::new(COOLDOWN, 2);
        m.ended(g(1), g(2), true, t0);
        m.ended(g(1), g(3), true, t0);
        m.ended(g(1), g(4), true, t0);
        assert!(!m.is_blocked(g(1), g(2), t0));
        assert!(m.is_blocked(g(1), g(3), t0) && m.is_blocked(g(1), g(4), t0));
        assert_eq!(m.blocks_len(), 2);
        // 2's list forgot 1 as well: two new blocks of 2 keep both.
        m.ended(g(2), g(5), true, t0);
        m.ended(g(2), g(6), true, t0);
        assert!(m.is_blocked(g(2), g(5), t0) && m.is_blocked(g(2), g(6), t0));
    }

    #[test]
    fn forget_drops_the_queue_entry_and_every_block() {
        let t0 = Instant::now();
        let mut m = mm();
        m.ended(g(1), g(2), true, t0);
        m.ended(g(1), g(3), false, t0);
        m.ended(g(2), g(3), true, t0);
        m.enqueue(entry(1, &[]), t0).unwrap();
        m.forget(g(1));
        assert_eq!(m.len(), 0);
        assert_eq!(m.blocks_len(), 1);
        assert!(!m.blocked_with.contains_key(&g(1)));
        assert_eq!(m.blocked_with[&g(2)], [g(3)]);
        m.forget(g(2));
        m.forget(g(3));
        assert_eq!(m.blocks_len(), 0);
        assert!(m.blocked_with.is_empty());
    }

    // ---- property test -------------------------------------------------------------------

    const GUESTS: u8 = 6;

    #[derive(Debug, Clone)]
    enum Op {
        /// Guest asks, with interests from a bit set over three tags.
        Enqueue(u8, u8),
        Cancel(u8),
        Away(u8),
        Back(u8),
        /// A chat (picked by index among the open ones) ends, reported or not.
        End(u8, bool),
        /// Time moves this many seconds; due cooldowns end, in order.
        Advance(u16),
        /// A guest not in a chat is gone.
        Forget(u8),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..GUESTS, 0u8..8).prop_map(|(g, i)| Op::Enqueue(g, i)),
            1 => (0..GUESTS).prop_map(Op::Cancel),
            1 => (0..GUESTS).prop_map(Op::Away),
            1 => (0..GUESTS).prop_map(Op::Back),
            3 => (any::<u8>(), prop::bool::weighted(0.3)).prop_map(|(i, r)| Op::End(i, r)),
            2 => (0u16..400).prop_map(Op::Advance),
            1 => (0..GUESTS).prop_map(Op::Forget),
        ]
    }

    /// What the matchmaker should hold, kept independently of it.
    struct Model {
        m: Matchmaker,
        now: Instant,
        /// Waiting guests, longest-waiting first: (id, interests, present).
        queue: Vec<(SessionId, Vec<String>, bool)>,
        chats: Vec<Pair>,
        forever: HashSet<(SessionId, SessionId)>,
        until: HashMap<(SessionId, SessionId), Instant>,
        /// Cooldown ends the caller must report, as the core's timer heap orders them.
        due: BTreeSet<(Instant, SessionId, SessionId)>,
        /// Guests gone for good (never seen again).
        gone: HashSet<SessionId>,
    }

    impl Model {
        fn blocked(&self, a: SessionId, b: SessionId) -> bool {
            let k = pair_key(a, b);
            self.forever.contains(&k) || self.until.get(&k).is_some_and(|t| *t > self.now)
        }

        fn eligible(&self, seeker: SessionId) -> Vec<usize> {
            self.queue
                .iter()
                .enumerate()
                .filter(|(_, (id, _, present))| {
                    *id != seeker && *present && !self.blocked(seeker, *id)
                })
                .map(|(i, _)| i)
                .collect()
        }

        /// Checks a pairing attempt by `seeker` (which was queued before the call, with
        /// `was` its entry) against the rules, then applies it to the model.
        fn attempted(&mut self, seeker: SessionId, got: Option<Pair>) -> Result<(), TestCaseError> {
            let Some(mine) = self.queue.iter().position(|e| e.0 == seeker) else {
                prop_assert_eq!(got, None, "a guest not queued was paired");
                return Ok(());
            };
            let (_, interests, present) = self.queue[mine].clone();
            let eligible = self.eligible(seeker);
            let Some([s, partner]) = got else {
                prop_assert!(
                    !present || eligible.is_empty(),
                    "{:?} could have been paired with {:?}",
                    seeker,
                    eligible
                );
                return Ok(());
            };
            prop_assert_eq!(s, seeker);
            prop_assert!(present, "an away guest was paired");
            let Some(at) = self.queue.iter().position(|e| e.0 == partner) else {
                return Err(TestCaseError::fail(format!(
                    "{partner:?} was paired without waiting (or twice)"
                )));
            };
            prop_assert!(
                eligible.contains(&at),
                "paired with an ineligible {:?}",
                partner
            );
            let sharing: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&i| self.queue[i].1.iter().any(|t| interests.contains(t)))
                .collect();
            let expected = match sharing.first() {
                Some(&i) if !interests.is_empty() => i,
                _ => eligible[0],
            };
            prop_assert_eq!(at, expected, "not the oldest (sharing) guest");
            self.queue.retain(|e| e.0 != seeker && e.0 != partner);
            self.chats.push([seeker, partner]);
            Ok(())
        }

        fn guest(&self, n: u8) -> SessionId {
            g(u128::from(n) + 1)
        }

        fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
            match op {
                Op::Enqueue(n, bits) => {
                    let id = self.guest(n);
                    if self.gone.contains(&id) || self.chats.iter().any(|c| c.contains(&id)) {
                        return Ok(());
                    }
                    let interests: Vec<String> = ["a", "b", "c"]
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| bits & (1 << i) != 0)
                        .map(|(_, t)| (*t).to_owned())
                        .collect();
                    let queued = self.queue.iter().any(|e| e.0 == id);
                    let got = self.m.enqueue(
                        Entry {
                            id,
                            interests: interests.clone(),
                            present: true,
                        },
                        self.now,
                    );
                    if queued {
                        prop_assert_eq!(got, Err(SignalError::AlreadySearching));
                    } else {
                        self.queue.push((id, interests, true));
                        let got = got.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                        self.attempted(id, got)?;
                    }
                }
                Op::Cancel(n) => {
                    let id = self.guest(n);
                    let queued = self.queue.iter().any(|e| e.0 == id);
                    prop_assert_eq!(self.m.cancel(id), queued);
                    self.queue.retain(|e| e.0 != id);
                }
                Op::Away(n) => {
                    let id = self.guest(n);
                    self.m.set_away(id);
                    if let Some(e) = self.queue.iter_mut().find(|e| e.0 == id) {
                        e.2 = false;
                    }
                }
                Op::Back(n) => {
                    let id = self.guest(n);
                    let got = self.m.set_present(id, self.now);
                    if let Some(e) = self.queue.iter_mut().find(|e| e.0 == id) {
                        e.2 = true;
                    }
                    self.attempted(id, got)?;
                }
                Op::End(i, reported) => {
                    if self.chats.is_empty() {
                        return Ok(());
                    }
                    let [a, b] = self.chats.remove(usize::from(i) % self.chats.len());
                    let (actor, other) = if i % 2 == 0 { (a, b) } else { (b, a) };
                    let k = pair_key(a, b);
                    let until = self.m.ended(actor, other, reported, self.now);
                    if reported {
                        prop_assert_eq!(until, None);
                        self.forever.insert(k);
                        self.until.remove(&k);
                    } else {
                        prop_assert_eq!(until, Some(self.now + COOLDOWN));
                        if !self.forever.contains(&k) {
                            self.until.insert(k, self.now + COOLDOWN);
                        }
                        self.due.insert((self.now + COOLDOWN, actor, other));
                    }
                }
                Op::Advance(s) => {
                    self.now += Duration::from_secs(u64::from(s));
                    while let Some(&(at, a, b)) = self.due.first() {
                        if at > self.now {
                            break;
                        }
                        self.due.pop_first();
                        let pairs = self.m.cooldown_over(a, b, self.now);
                        // Only a cooldown that is over (not one a later end extended, a report
                        // replaced, or a guest's removal dropped) lets the two try again.
                        let k = pair_key(a, b);
                        if self.until.get(&k).is_some_and(|t| *t <= self.now) {
                            self.until.remove(&k);
                            self.attempted(a, pairs[0])?;
                            self.attempted(b, pairs[1])?;
                        } else {
                            prop_assert_eq!(pairs, [None, None]);
                        }
                    }
                }
                Op::Forget(n) => {
                    let id = self.guest(n);
                    if self.chats.iter().any(|c| c.contains(&id)) {
                        return Ok(());
                    }
                    self.m.forget(id);
                    self.queue.retain(|e| e.0 != id);
                    self.forever.retain(|(a, b)| *a != id && *b != id);
                    self.until.retain(|(a, b), _| *a != id && *b != id);
                    self.gone.insert(id);
                }
            }
            self.check()
        }

        fn check(&self) -> Result<(), TestCaseError> {
            // None lost, none added, the order kept.
            let want: Vec<SessionId> = self.queue.iter().map(|e| e.0).collect();
            prop_assert_eq!(queued(&self.m), want.clone());
            prop_assert_eq!(self.m.len(), want.len());
            // Nobody waits in a chat.
            for c in &self.chats {
                prop_assert!(!self.m.is_queued(c[0]) && !self.m.is_queued(c[1]));
            }
            // The matchmaker's blocks are the model's.
            for a in 1..=u128::from(GUESTS) {
                for b in 1..=u128::from(GUESTS) {
                    if a != b {
                        prop_assert_eq!(
                            self.m.is_blocked(g(a), g(b), self.now),
                            self.blocked(g(a), g(b))
                        );
                    }
                }
            }
            // Nothing left to pair: no two present waiting guests may meet.
            for (i, x) in self.queue.iter().enumerate() {
                for y in &self.queue[i + 1..] {
                    prop_assert!(
                        !(x.2 && y.2) || self.blocked(x.0, y.0),
                        "{:?} and {:?} both wait and could meet",
                        x.0,
                        y.0
                    );
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Random asks, cancels, absences, chat ends (reported or not) and time: never a guest
        /// paired twice, never one lost, never a blocked or cooling-down pair, always the
        /// longest-waiting (sharing) guest, and nothing left that could be paired.
        #[test]
        fn matchmaking_keeps_its_rules(ops in prop::collection::vec(arb_op(), 1..200)) {
            let mut model = Model {
                m: mm(),
                now: Instant::now(),
                queue: Vec::new(),
                chats: Vec::new(),
                forever: HashSet::new(),
                until: HashMap::new(),
                due: BTreeSet::new(),
                gone: HashSet::new(),
            };
            for op in ops {
                model.apply(op)?;
            }
        }
    }
}
