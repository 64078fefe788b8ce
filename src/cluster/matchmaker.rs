//! The global match queue in Redis (see docs/cluster.md, "Matchmaker in Redis"): one queue
//! for the whole cluster, changed only by one Lua script ([`SCRIPT`], `matchmaker.lua`), one
//! atomic call per operation, every key under the `{mm}` hash tag (one Cluster slot).
//!
//! It mirrors the single-node matchmaker (`signaling/src/matchmaker.rs`) call for call:
//! oldest first, interests preferred (the oldest guest sharing one, else the oldest), away
//! guests keep their place but are not paired, a guest is never paired with itself nor with a
//! guest it is cooling down or blocked with; every call returns the pairs it formed.
//!
//! Bounded: the queue holds at most [`MatchSettings::cap`] guests (past that `enqueue` is
//! refused with [`MatchError::QueueFull`]) and one pairing looks at the
//! [`MatchSettings::scan`] longest-waiting guests only. The trade-off: a script never runs
//! longer than a scan of that many entries, but a guest for whom all of them are ineligible
//! (away, blocked, cooling down) waits even if a younger compatible guest is queued further
//! back, and a shared interest is only looked for among them. With the default (512) that
//! takes hundreds of guests away or blocked at the head of the queue.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{IntGauge, Registry};
use redis::Script;

use super::bus::NodeId;
use super::conn::{Command, Fault, Redis};

/// The script, loaded once per Redis (EVALSHA, loaded again after a restart).
pub static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("matchmaker.lua")));

/// The queue (a sorted set by enqueue number).
pub const QUEUE_KEY: &str = "tandem:{mm}:queue";
/// The enqueue-number counter.
pub const SEQ_KEY: &str = "tandem:{mm}:seq";

/// Longest guest id accepted, in bytes.
const MAX_SID: usize = 64;
/// Most interests per guest, and longest interest, in bytes.
const MAX_INTERESTS: usize = 16;
const MAX_INTEREST_BYTES: usize = 256;
/// Queue entries a node's departure removes per script call.
const DROP_BATCH: usize = 1000;
/// A cooldown with at most this left counts as over (the TTL runs on Redis's clock, the
/// caller's timer on its own).
const COOLDOWN_SLACK: Duration = Duration::from_millis(1000);

/// Bounds of the queue.
#[derive(Clone, Copy, Debug)]
pub struct MatchSettings {
    /// Guests queued at most.
    pub cap: usize,
    /// Guests one pairing looks at, longest-waiting first.
    pub scan: usize,
}

impl Default for MatchSettings {
    fn default() -> Self {
        MatchSettings {
            cap: 100_000,
            scan: 512,
        }
    }
}

/// The matchmaker's metric (`tandem_cluster_match_queue`), refreshed by [`Matchmaker::queued`].
#[derive(Clone)]
pub struct MatchMetrics {
    pub queue: IntGauge,
}

impl MatchMetrics {
    pub fn register(r: &Registry) -> anyhow::Result<MatchMetrics> {
        let queue = IntGauge::new(
            "tandem_cluster_match_queue",
            "Guests waiting in the cluster's match queue, as last read",
        )?;
        crate::metrics::record(&queue);
        r.register(Box::new(queue.clone()))?;
        Ok(MatchMetrics { queue })
    }
}

/// A guest paired by a call: its partner and the partner's node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paired {
    /// The guest whose call found the match, its node and its username.
    pub seeker: String,
    pub seeker_node: NodeId,
    pub seeker_name: String,
    pub partner_sid: String,
    pub partner_node: NodeId,
    pub partner_name: String,
}

/// Why two guests are not to be paired again, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairBlock {
    /// Their chat ended: the re-pair cooldown.
    Cooldown(Duration),
    /// One reported the other (the token lifetime: after that both guests are new).
    Blocked(Duration),
}

#[derive(Clone, Debug)]
pub enum MatchError {
    /// The guest is queued already (nothing changed).
    AlreadySearching,
    /// The queue is at its cap.
    QueueFull,
    /// An argument the script must not see (a bad id or interest).
    Invalid(&'static str),
    /// Redis failed or answered something unreadable.
    Redis(Fault),
}

impl fmt::Display for MatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchError::AlreadySearching => f.write_str("the guest is queued already"),
            MatchError::QueueFull => f.write_str("the match queue is full"),
            MatchError::Invalid(what) => write!(f, "invalid {what}"),
            MatchError::Redis(fault) => write!(f, "the match queue is unreachable: {fault}"),
        }
    }
}

impl std::error::Error for MatchError {}

impl From<Fault> for MatchError {
    fn from(f: Fault) -> Self {
        MatchError::Redis(f)
    }
}

/// The cluster's match queue. Cheap to clone.
#[derive(Clone)]
pub struct Matchmaker {
    redis: Redis,
    settings: MatchSettings,
    metrics: MatchMetrics,
}

fn check_sid(sid: &str) -> Result<(), MatchError> {
    let ok = !sid.is_empty()
        && sid.len() <= MAX_SID
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then_some(()).ok_or(MatchError::Invalid("guest id"))
}

fn join_interests(interests: &[String]) -> Result<String, MatchError> {
    if interests.len() > MAX_INTERESTS {
        return Err(MatchError::Invalid("interests"));
    }
    for tag in interests {
        if tag.is_empty() || tag.len() > MAX_INTEREST_BYTES || tag.chars().any(char::is_control) {
            return Err(MatchError::Invalid("interest"));
        }
    }
    Ok(interests.join("\n"))
}

fn bad(reply: &[String]) -> MatchError {
    MatchError::Redis(Fault::response(format!(
        "unexpected answer from the match script: {:?}",
        reply.iter().take(4).collect::<Vec<_>>()
    )))
}

/// Reads `{"p", seeker, its node, its name, partner, its node, its name, …}` (or `{"q"}`).
fn parse_pairs(reply: &[String]) -> Result<Vec<Paired>, MatchError> {
    match reply.split_first() {
        Some((tag, [])) if tag == "q" => Ok(Vec::new()),
        Some((tag, rest)) if tag == "p" && !rest.is_empty() && rest.len() % 6 == 0 => rest
            .chunks_exact(6)
            .map(|t| {
                Ok(Paired {
                    seeker: t[0].clone(),
                    seeker_node: NodeId::from_hex(&t[1]).ok_or_else(|| bad(reply))?,
                    seeker_name: t[2].clone(),
                    partner_sid: t[3].clone(),
                    partner_node: NodeId::from_hex(&t[4]).ok_or_else(|| bad(reply))?,
                    partner_name: t[5].clone(),
                })
            })
            .collect(),
        Some((tag, [code])) if tag == "e" => Err(match code.as_str() {
            "already_searching" => MatchError::AlreadySearching,
            "queue_full" => MatchError::QueueFull,
            _ => bad(reply),
        }),
        _ => Err(bad(reply)),
    }
}

impl Matchmaker {
    pub(super) fn new(redis: Redis, settings: MatchSettings, metrics: MatchMetrics) -> Matchmaker {
        Matchmaker {
            redis,
            settings: MatchSettings {
                cap: settings.cap.max(1),
                scan: settings.scan.max(1),
            },
            metrics,
        }
    }

    async fn run(&self, command: Command, args: &[&[u8]]) -> Result<Vec<String>, MatchError> {
        let mut invocation = SCRIPT.prepare_invoke();
        invocation.key(QUEUE_KEY).key(SEQ_KEY);
        for a in args {
            invocation.arg(*a);
        }
        Ok(self.redis.invoke(command, &invocation).await?)
    }

    /// `sid` (on `node`) asks for a partner: paired with the best waiting guest if there is
    /// one (both leave the queue), else queued behind everyone (unless it is refused). A guest
    /// enqueued away (`present` false) is queued without pairing.
    pub async fn enqueue(
        &self,
        sid: &str,
        username: &str,
        interests: &[String],
        node: NodeId,
        present: bool,
        now_ms: u64,
    ) -> Result<Option<Paired>, MatchError> {
        check_sid(sid)?;
        let interests = join_interests(interests)?;
        let reply = self
            .run(
                Command::MatchEnqueue,
                &[
                    b"enqueue",
                    sid.as_bytes(),
                    interests.as_bytes(),
                    node.to_string().as_bytes(),
                    now_ms.to_string().as_bytes(),
                    self.settings.cap.to_string().as_bytes(),
                    self.settings.scan.to_string().as_bytes(),
                    if present { b"0" } else { b"1" },
                    username.as_bytes(),
                ],
            )
            .await?;
        Ok(parse_pairs(&reply)?.into_iter().next())
    }

    /// Takes `sid` out of the queue; false if it was not queued.
    pub async fn cancel(&self, sid: &str) -> Result<bool, MatchError> {
        check_sid(sid)?;
        let reply = self
            .run(Command::MatchCancel, &[b"cancel", sid.as_bytes()])
            .await?;
        match reply.first().map(String::as_str) {
            Some("q") => Ok(true),
            Some("n") => Ok(false),
            _ => Err(bad(&reply)),
        }
    }

    /// A queued guest lost its last socket (`away`), or is back: an away guest keeps its place
    /// but is not paired; one that is back is paired at once if it can be. Nothing for a guest
    /// not queued.
    pub async fn set_away(&self, sid: &str, away: bool) -> Result<Option<Paired>, MatchError> {
        check_sid(sid)?;
        let reply = self
            .run(
                Command::MatchAway,
                &[
                    b"away",
                    sid.as_bytes(),
                    if away { b"1" } else { b"0" },
                    self.settings.scan.to_string().as_bytes(),
                ],
            )
            .await?;
        if reply.first().map(String::as_str) == Some("n") {
            return Ok(None);
        }
        Ok(parse_pairs(&reply)?.into_iter().next())
    }

    /// The chat of `a` and `b` ended: they are not paired again while the pair's key lives
    /// (its TTL). A block is never shortened nor turned into a cooldown. After a cooldown the
    /// caller calls [`Matchmaker::cooldown_over`] (nothing in Redis wakes anyone up).
    pub async fn record_end(&self, a: &str, b: &str, block: PairBlock) -> Result<(), MatchError> {
        check_sid(a)?;
        check_sid(b)?;
        let (kind, ttl): (&[u8], Duration) = match block {
            PairBlock::Cooldown(t) => (b"cooldown", t),
            PairBlock::Blocked(t) => (b"blocked", t),
        };
        let ttl = ttl.as_millis().max(1).to_string();
        self.run(
            Command::MatchEnd,
            &[b"end", a.as_bytes(), b.as_bytes(), kind, ttl.as_bytes()],
        )
        .await?;
        Ok(())
    }

    /// The cooldown of `a` and `b` is over: each of them that waits is paired if it can be now
    /// (`a` first). Nothing if they were blocked (or cooled down again) since.
    pub async fn cooldown_over(&self, a: &str, b: &str) -> Result<Vec<Paired>, MatchError> {
        check_sid(a)?;
        check_sid(b)?;
        let reply = self
            .run(
                Command::MatchCooldownOver,
                &[
                    b"cooldown_over",
                    a.as_bytes(),
                    b.as_bytes(),
                    self.settings.scan.to_string().as_bytes(),
                    COOLDOWN_SLACK.as_millis().to_string().as_bytes(),
                ],
            )
            .await?;
        parse_pairs(&reply)
    }

    /// Removes every queue entry of `node` (a node that left the registry); returns how many.
    pub async fn drop_node(&self, node: NodeId) -> Result<usize, MatchError> {
        let node = node.to_string();
        let mut removed = 0;
        // Bounded: the queue holds at most `cap` entries.
        for _ in 0..=self.settings.cap / DROP_BATCH + 1 {
            let reply = self
                .run(
                    Command::MatchDropNode,
                    &[
                        b"drop_node",
                        node.as_bytes(),
                        DROP_BATCH.to_string().as_bytes(),
                    ],
                )
                .await?;
            let (n, left) = match reply.as_slice() {
                [k, n, left] if k == "k" => (
                    n.parse::<usize>().map_err(|_| bad(&reply))?,
                    left.parse::<usize>().map_err(|_| bad(&reply))?,
                ),
                _ => return Err(bad(&reply)),
            };
            removed += n;
            if left == 0 {
                break;
            }
        }
        Ok(removed)
    }

    /// Guests queued (also sets `tandem_cluster_match_queue`).
    pub async fn queued(&self) -> Result<u64, MatchError> {
        let reply = self.run(Command::MatchLen, &[b"len"]).await?;
        let n = match reply.as_slice() {
            [k, n] if k == "k" => n.parse::<u64>().map_err(|_| bad(&reply))?,
            _ => return Err(bad(&reply)),
        };
        self.metrics.queue.set(i64::try_from(n).unwrap_or(i64::MAX));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn replies_are_read_strictly() {
        let node = NodeId([3; 16]);
        assert_eq!(parse_pairs(&s(&["q"])).unwrap(), vec![]);
        let n = node.to_string();
        let pairs = parse_pairs(&s(&["p", "a", &n, "Ann", "b", &n, "Bo"])).unwrap();
        assert_eq!(
            pairs,
            vec![Paired {
                seeker: "a".into(),
                seeker_node: node,
                seeker_name: "Ann".into(),
                partner_sid: "b".into(),
                partner_node: node,
                partner_name: "Bo".into(),
            }]
        );
        assert!(matches!(
            parse_pairs(&s(&["e", "already_searching"])),
            Err(MatchError::AlreadySearching)
        ));
        assert!(matches!(
            parse_pairs(&s(&["e", "queue_full"])),
            Err(MatchError::QueueFull)
        ));
        for bad in [
            &["p", "a", &n, "A", "b", "nothex", "B"][..],
            &["p", "a", "b", &n],
            &["p", "a"],
            &[],
            &["x"],
        ] {
            assert!(matches!(parse_pairs(&s(bad)), Err(MatchError::Redis(_))));
        }
    }

    #[test]
    fn ids_and_interests_are_checked_before_redis() {
        assert!(check_sid("0123abcd-_").is_ok());
        for bad in ["", "a:b", "a b", &"x".repeat(65)] {
            assert!(check_sid(bad).is_err(), "{bad:?}");
        }
        assert_eq!(join_interests(&s(&["a", "b c"])).unwrap(), "a\nb c");
        assert!(join_interests(&s(&["a\nb"])).is_err());
        assert!(join_interests(&s(&[""])).is_err());
        assert!(join_interests(&vec!["x".to_owned(); 17]).is_err());
    }

    #[test]
    fn the_script_is_embedded() {
        assert!(include_str!("matchmaker.lua").contains("tandem:{mm}:"));
        assert!(QUEUE_KEY.contains("{mm}") && SEQ_KEY.contains("{mm}"));
    }
}
