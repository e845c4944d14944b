//! Which replicas a Redis Cluster master must have a change on before it counts, and have
//! follow it before it is read from (see [`crate::connection`]): any of them may be promoted
//! with the master's data, a split brain included (the master cut off from its cluster's
//! bus goes on taking changes that its promoted replica never gets).
//!
//! Two sources, neither enough alone:
//! - **The slot map** (`CLUSTER NODES`, asked of any node): every replica it names for the
//!   master, failed or not. It knows a replica only once the replica told the asked node,
//!   over the bus, whose it is: measured 0.7 to 7.7 s after it attached.
//! - **The master itself** (`INFO replication`, with every read and every change, and when
//!   connecting): the replicas connected to it, at once. A replica that stops following it
//!   (promoted, moved, stopped, or restarting) is *lost*: it stays counted until a map names
//!   it failed (`fail`: the cluster agrees it is dead) or no longer names it at all (it was
//!   forgotten), until another master says it follows it (after it left), until it follows
//!   again, or for [`LOST_REPLICA_KEPT`], longer than a cluster node timeout sensibly is: a
//!   master cut off from its cluster stops taking writes once the node timeout passes. What
//!   the map says of it otherwise explains nothing: the asked node may not have heard yet
//!   that it left (a replica of this master), moved (of another), or was promoted (a master).
//!
//! A replica connected to the master that the map names failed (frozen, its link not yet
//! timed out) is not waited for: the cluster will not promote it.
//!
//! A replica may also attach and leave between two of this instance's calls to the master,
//! and be promoted for its slots, before any map names it. Two signs give it away, each
//! counted as one lost replica: a master whose history started anew since its connection
//! was made (a new backlog, not a promotion: see [`started_anew`]) and that names no replica
//! (see [`ReplicaWatch::history_changed`]); and a master that served more syncs (`INFO
//! stats`, with every read, every change and every new connection) since it last said than
//! replicas may have been served one (see [`ReplicaWatch::observed`]; a replica whose link
//! broke and came back between two calls counts so too).
//!
//! What none of this sees: a replica that attached and left between two calls after the
//! master's statistics were reset (`CONFIG RESETSTAT`), its count back to no more than it
//! was; a replica whose address in `INFO replication` differs from its cluster address (a
//! `replica-announce-ip` other than `cluster-announce-ip`, NAT): the map's count then
//! covers it, and a lost one counts as forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a replica that stopped following its master, unexplained, is still counted.
pub(crate) const LOST_REPLICA_KEPT: Duration = Duration::from_secs(60);

/// A replica's address (`ip` and `port`, as the master's `INFO replication` and the map's
/// `CLUSTER NODES` both give it).
pub(crate) type Address = (String, u16);

/// What the slot map says of a node, by its address (from [`read_nodes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A replica of the master with this id, not failed.
    ReplicaOf(String),
    /// Failed (`fail`), whatever it was.
    Failed,
    /// Anything else: a master, a node in handshake.
    Other,
}

/// One master's replicas, shared by its two connections.
#[derive(Debug, Default)]
pub(crate) struct ReplicaWatch {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Replicas the last map names for the master, not failed.
    named: usize,
    /// The addresses the last map names failed.
    failed: HashSet<Address>,
    /// Connected, as the master said last, and when.
    connected: HashSet<Address>,
    observed_at: Option<Instant>,
    /// Connected since, no longer, and not yet explained: since when each stopped following.
    lost: HashMap<Address, Instant>,
    /// Since when a replica no one saw may have followed the master and left it: see
    /// [`ReplicaWatch::history_changed`] and [`ReplicaWatch::observed`].
    unseen_since: Option<Instant>,
    /// The syncs the master had served when it last said.
    syncs: Option<Syncs>,
}

/// How many replication syncs (full or partial) a master had served since it started (a
/// replica attaching, or attaching again, is served one), and in which history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Syncs {
    /// The process (`run_id`): its count starts at 0.
    pub(crate) process: String,
    /// Its replication id: when it changes (a promotion, a new backlog), every replica
    /// attaches again.
    pub(crate) history: String,
    pub(crate) served: u64,
}

impl ReplicaWatch {
    /// How many replicas must have a change (and follow the master, for a read): the map's,
    /// or those connected and lost, whichever are more, never one the map names failed.
    pub(crate) fn required(&self) -> usize {
        let state = self.lock();
        let followers =
            state.connected.iter().chain(state.lost.keys()).filter(|address| !state.failed.contains(*address));
        state.named.max(followers.count() + usize::from(state.unseen_since.is_some()))
    }

    /// The master said (`INFO replication`) these replicas are connected to it now, and
    /// (`INFO stats`) how many syncs it had served. More syncs since it last said than
    /// replicas that may have been served one since (those that came, or all of them when
    /// its history changed or its process restarted): one attached and left between the
    /// two, unseen, maybe promoted for this master's slots. Counted as one lost replica, for
    /// [`LOST_REPLICA_KEPT`]. So is a replica whose link broke and came back between two
    /// calls: the price of not telling them apart.
    pub(crate) fn observed(&self, connected: HashSet<Address>, syncs: Option<Syncs>, now: Instant) {
        let mut state = self.lock();
        // Compared with the answer read last, whichever it is, count and replicas together:
        // one older than it (the other connection's) puts both back. Fewer syncs than before
        // in the same process (`CONFIG RESETSTAT`) are a new start; a reset followed by as
        // many syncs as there were is not seen (see the module's docs).
        if let (Some(last), Some(syncs)) = (&state.syncs, &syncs) {
            let (before, may_have_synced) = if last.process != syncs.process {
                (0, connected.len())
            } else if last.history != syncs.history {
                (last.served, connected.len())
            } else {
                (last.served, connected.difference(&state.connected).count())
            };
            if syncs.served > before + may_have_synced as u64 {
                state.unseen_since = Some(now);
            }
        }
        state.syncs = syncs;
        let left: Vec<Address> = state.connected.difference(&connected).cloned().collect();
        for address in left {
            state.lost.entry(address).or_insert(now);
        }
        state.lost.retain(|address, _| !connected.contains(address));
        state.connected = connected;
        state.observed_at = Some(now);
    }

    /// The master's history started anew since its connection was made (a new replication
    /// id, not from a promotion), and it says (after [`Self::observed`]) that no replica
    /// follows it. A master starts a new history when it takes its first replica in a while
    /// (with a new backlog): a replica may have attached and left between two calls, unseen,
    /// promoted for this master's slots. Counted as one lost replica, for
    /// [`LOST_REPLICA_KEPT`] (no map can explain a replica no one saw).
    pub(crate) fn history_changed(&self, now: Instant) {
        let mut state = self.lock();
        if state.connected.is_empty() {
            state.unseen_since = Some(now);
        }
    }

    /// The replicas the master said follow it, and when it last said so (`None`: never).
    pub(crate) fn following(&self) -> (Option<Instant>, Vec<Address>) {
        let state = self.lock();
        (state.observed_at, state.connected.iter().cloned().collect())
    }

    /// A slot map was read: it names `named` replicas of this master not failed, and says
    /// what each node it knows is; `elsewhere` holds, for each replica another master said
    /// follows it, when that master last said so.
    pub(crate) fn mapped(
        &self,
        named: usize,
        nodes: &HashMap<Address, Seen>,
        elsewhere: &HashMap<Address, Instant>,
        now: Instant,
    ) {
        let mut state = self.lock();
        state.named = named;
        if state.unseen_since.is_some_and(|since| now.duration_since(since) >= LOST_REPLICA_KEPT) {
            state.unseen_since = None;
        }
        state.failed =
            nodes.iter().filter(|(_, seen)| **seen == Seen::Failed).map(|(address, _)| address.clone()).collect();
        state.lost.retain(|address, since| {
            let explained = match nodes.get(address) {
                // Dead, or forgotten.
                None | Some(Seen::Failed) => true,
                // What the asked node says of a replica may be older than its leaving (it
                // hears of each node from that node, seconds late): a replica of this master
                // or of another, or a master (promoted, maybe for this master's slots, or
                // not yet heard to have become a replica) explains nothing. Another master
                // saying, after it left, that it follows it does.
                Some(Seen::ReplicaOf(_) | Seen::Other) => {
                    elsewhere.get(address).is_some_and(|observed| observed > since)
                }
            };
            !explained && now.duration_since(*since) < LOST_REPLICA_KEPT
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The replicas connected to a master, from its `INFO replication` answer
/// (`slave0:ip=10.0.0.5,port=6379,state=online,…`).
pub(crate) fn connected_addresses(replication: &str) -> HashSet<Address> {
    replication
        .lines()
        .filter(|line| line.starts_with("slave") && line.as_bytes().get(5).is_some_and(u8::is_ascii_digit))
        .filter_map(|line| {
            let fields = line.split_once(':')?.1;
            let field = |name: &str| fields.split(',').find_map(|field| field.strip_prefix(name));
            Some((field("ip=")?.to_owned(), field("port=")?.trim().parse().ok()?))
        })
        .collect()
}

/// The syncs a master served, from its `INFO stats` answer (`sync_full`, `sync_partial_ok`;
/// a refused partial sync, `sync_partial_err`, goes on as a full one).
pub(crate) fn syncs_served(stats: &str) -> Option<u64> {
    let count = |name| crate::connection::info_field(stats, name)?.parse::<u64>().ok();
    Some(count("sync_full:")? + count("sync_partial_ok:")?)
}

/// Whether a master's history started anew since a connection identified it with replication
/// id `known`, from its `INFO replication` answer: a new `master_replid` with an empty
/// `master_replid2`, which is what a master takes when it makes a new backlog for its first
/// replica in a while (one may have attached and left unseen: see
/// [`ReplicaWatch::history_changed`]). A promotion keeps the history it followed as
/// `master_replid2`, however many promotions ago the connection was made (a failback
/// included): that is not a new history, and its replica, the demoted master, is in the map.
pub(crate) fn started_anew(replication: &str, known: &str) -> bool {
    let field = |name| crate::connection::info_field(replication, name);
    field("role:") == Some("master")
        && field("master_replid:") != Some(known)
        && field("master_replid2:").is_none_or(|id| id.bytes().all(|byte| byte == b'0'))
}

/// What a `CLUSTER NODES` answer says: each master's replicas not failed (by the master's
/// id), and what each node is (by its address). Lines: `<id> <ip:port@bus[,host]> <flags>
/// <master id or -> …`; `fail?` (only suspected) is not failed.
pub(crate) fn read_nodes(nodes: &str) -> (HashMap<&str, usize>, HashMap<Address, Seen>) {
    let mut replicas = HashMap::new();
    let mut seen = HashMap::new();
    for line in nodes.lines() {
        let mut fields = line.split(' ').skip(1);
        let (Some(address), Some(flags), Some(master)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let is_replica = flags.split(',').any(|flag| flag == "slave" || flag == "replica");
        let failed = flags.split(',').any(|flag| flag == "fail");
        let what = if failed {
            Seen::Failed
        } else if is_replica && master != "-" {
            *replicas.entry(master).or_insert(0) += 1;
            Seen::ReplicaOf(master.to_owned())
        } else {
            Seen::Other
        };
        let address = address.split(['@', ',']).next().unwrap_or_default();
        if let Some((ip, port)) = address.rsplit_once(':')
            && let Ok(port) = port.parse::<u16>()
            && port > 0
        {
            seen.insert((ip.to_owned(), port), what);
        }
    }
    (replicas, seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `CLUSTER NODES` answer (Redis 7.2) of three masters: the first with a replica in
    /// sync, one that never synced and one the cluster holds failed; the second with a
    /// replica only suspected (`fail?`); the third with none; and a node still in handshake.
    const NODES: &str = "\
07c3 127.0.0.1:30001@40001,host-a myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002 master - 0 1700000000000 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master - 0 1700000000000 3 connected 10923-16383
e7d1 127.0.0.1:30004@40004 slave 07c3 0 1700000000000 1 connected
6ec2 127.0.0.1:30005@40005 slave 07c3 0 1700000000000 1 connected
824f 127.0.0.1:30006@40006 slave,fail 07c3 1700000000000 1700000000000 1 disconnected
a1b2 127.0.0.1:30007@40007 slave,fail? 67ed 1700000000000 0 2 connected
c3d4 :0@0 handshake,noaddr - 0 0 0 disconnected
";

    fn at(port: u16) -> Address {
        ("127.0.0.1".to_owned(), port)
    }

    #[test]
    fn every_replica_not_held_failed_counts_synced_or_not() {
        let (replicas, seen) = read_nodes(NODES);
        assert_eq!(replicas.get("07c3"), Some(&2), "{replicas:?}");
        assert_eq!(replicas.get("67ed"), Some(&1), "{replicas:?}");
        assert_eq!(replicas.get("292f"), None, "{replicas:?}");
        assert_eq!(replicas.len(), 2, "{replicas:?}");
        assert_eq!(seen.get(&at(30004)), Some(&Seen::ReplicaOf("07c3".to_owned())));
        assert_eq!(seen.get(&at(30006)), Some(&Seen::Failed));
        assert_eq!(seen.get(&at(30001)), Some(&Seen::Other));
        assert_eq!(seen.len(), 7, "the node without an address is left out: {seen:?}");
        assert!(read_nodes("").0.is_empty());
        assert!(read_nodes("garbage\n\n").1.is_empty());
    }

    #[test]
    fn the_replicas_a_master_names_connected_are_read_from_its_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=127.0.0.1,port=30004,state=online,offset=42,lag=0\r\n\
                    slave1:ip=10.0.0.7,port=6380,state=wait_bgsave,offset=0,lag=0\r\n\
                    slave_read_only:1\r\nmaster_replid:abc\r\n";
        let connected = connected_addresses(info);
        assert_eq!(connected, HashSet::from([at(30004), ("10.0.0.7".to_owned(), 6380)]));
        assert!(connected_addresses("role:master\r\nconnected_slaves:0\r\n").is_empty());
    }

    /// A replica attaches to the master after the map was read, then leaves it (promoted
    /// during a split brain): it is required until a map explains it, or for
    /// [`LOST_REPLICA_KEPT`].
    #[test]
    fn a_replica_that_left_its_master_unexplained_is_still_required() {
        let watch = ReplicaWatch::default();
        let nowhere = HashMap::new();
        let start = Instant::now();
        let (_, mut before) = read_nodes(NODES);
        before.insert(at(30009), Seen::Other);
        watch.mapped(0, &before, &nowhere, start);
        assert_eq!(watch.required(), 0);
        watch.observed(HashSet::from([at(30009)]), None, start);
        assert_eq!(watch.required(), 1, "attached: the master says so before any map");
        watch.observed(HashSet::new(), None, start + Duration::from_secs(1));
        assert_eq!(watch.required(), 1, "left, unexplained");

        // Maps that see it a master (promoted, or the asked node has not heard it attached),
        // this master's replica or another's (the asked node has not heard it left, or moved
        // here): still required.
        for seen in [Seen::Other, Seen::ReplicaOf("292f".to_owned()), Seen::ReplicaOf("67ed".to_owned())] {
            before.insert(at(30009), seen);
            watch.mapped(0, &before, &nowhere, start + Duration::from_secs(2));
            assert_eq!(watch.required(), 1);
        }
        // Another master said it followed it, but before it left this one: still required.
        let earlier = HashMap::from([(at(30009), start)]);
        watch.mapped(0, &before, &earlier, start + Duration::from_secs(3));
        assert_eq!(watch.required(), 1);
        // Until it has been lost for the time kept.
        watch.mapped(0, &before, &nowhere, start + Duration::from_secs(1) + LOST_REPLICA_KEPT);
        assert_eq!(watch.required(), 0);
    }

    #[test]
    fn a_replica_that_left_is_forgotten_once_failed_forgotten_or_following_another_master() {
        let (_, mut nodes) = read_nodes(NODES);
        let start = Instant::now();
        let after_it_left = HashMap::from([(at(30009), start + Duration::from_secs(2))]);
        for (seen, elsewhere) in [
            (Some(Seen::Failed), HashMap::new()),
            (None, HashMap::new()),
            (Some(Seen::ReplicaOf("67ed".to_owned())), after_it_left.clone()),
            (Some(Seen::Other), after_it_left),
        ] {
            let watch = ReplicaWatch::default();
            watch.observed(HashSet::from([at(30009)]), None, start);
            watch.observed(HashSet::new(), None, start + Duration::from_secs(1));
            match &seen {
                Some(seen) => nodes.insert(at(30009), seen.clone()),
                None => nodes.remove(&at(30009)),
            };
            watch.mapped(0, &nodes, &elsewhere, start + Duration::from_secs(3));
            assert_eq!(watch.required(), 0, "{seen:?} {elsewhere:?}");
        }
    }

    #[test]
    fn a_replica_still_connected_but_held_failed_is_not_waited_for() {
        let watch = ReplicaWatch::default();
        let now = Instant::now();
        watch.observed(HashSet::from([at(30006), at(30004)]), None, now);
        let (_, nodes) = read_nodes(NODES);
        watch.mapped(2, &nodes, &HashMap::new(), now);
        assert_eq!(watch.required(), 2, "the map's two, the frozen 30006 not among them");
        watch.mapped(0, &nodes, &HashMap::new(), now);
        assert_eq!(watch.required(), 1, "30004 connected");
    }

    #[test]
    fn a_master_whose_history_changed_without_a_replica_counts_one_unseen() {
        let watch = ReplicaWatch::default();
        let start = Instant::now();
        watch.observed(HashSet::new(), None, start);
        watch.history_changed(start);
        assert_eq!(watch.required(), 1, "a replica attached and left between two calls");
        watch.mapped(0, &HashMap::new(), &HashMap::new(), start + Duration::from_secs(5));
        assert_eq!(watch.required(), 1, "no map explains it");
        watch.mapped(0, &HashMap::new(), &HashMap::new(), start + LOST_REPLICA_KEPT);
        assert_eq!(watch.required(), 0);

        let with_one = ReplicaWatch::default();
        with_one.observed(HashSet::from([at(30004)]), None, start);
        with_one.history_changed(start);
        assert_eq!(with_one.required(), 1, "its first replica, there: the one counted");
    }

    #[test]
    fn more_syncs_served_than_replicas_that_came_is_one_unseen() {
        let syncs = |process: &str, history: &str, served| {
            Some(Syncs { process: process.to_owned(), history: history.to_owned(), served })
        };
        let start = Instant::now();
        let watch = ReplicaWatch::default();
        watch.observed(HashSet::from([at(30004)]), syncs("a", "1", 7), start);
        assert_eq!(watch.required(), 1);
        watch.observed(HashSet::from([at(30004), at(30005)]), syncs("a", "1", 8), start);
        assert_eq!(watch.required(), 2, "a newcomer, seen: its sync is explained");
        watch.observed(HashSet::from([at(30004), at(30005)]), syncs("a", "1", 9), start);
        assert_eq!(watch.required(), 3, "one more sync, no one more: attached and left unseen");
        watch.mapped(0, &HashMap::new(), &HashMap::new(), start + Duration::from_secs(5));
        assert_eq!(watch.required(), 3, "no map explains it");
        watch.mapped(0, &HashMap::new(), &HashMap::new(), start + LOST_REPLICA_KEPT);
        assert_eq!(watch.required(), 2);

        let both = || HashSet::from([at(30004), at(30005)]);
        let watch = ReplicaWatch::default();
        watch.observed(both(), syncs("a", "1", 7), start);
        watch.observed(HashSet::from([at(30004)]), syncs("a", "1", 6), start);
        watch.observed(both(), syncs("a", "1", 7), start);
        assert_eq!(watch.required(), 2, "an older answer read after, then the newer again: 30005 came");
        watch.observed(both(), syncs("a", "1", 0), start);
        watch.observed(both(), syncs("a", "1", 0), start);
        assert_eq!(watch.required(), 2, "the count reset: a new start");
        watch.observed(both(), syncs("a", "2", 2), start);
        assert_eq!(watch.required(), 2, "a promotion (a failback): both attached again");
        watch.observed(both(), syncs("b", "2", 2), start);
        assert_eq!(watch.required(), 2, "a restart: both attached to the new process");
        watch.observed(both(), None, start);
        assert_eq!(watch.required(), 2, "no count said");

        for (process, history) in [("b", "3"), ("c", "1")] {
            let watch = ReplicaWatch::default();
            watch.observed(HashSet::from([at(30004)]), syncs("b", "1", 4), start);
            watch.observed(HashSet::from([at(30004)]), syncs(process, history, 6), start);
            assert_eq!(
                watch.required(),
                2,
                "a history or process anew, two syncs for one replica: {process}.{history}"
            );
        }

        let stats = "# Stats\r\ntotal_connections_received:12\r\nsync_full:2\r\nsync_partial_ok:3\r\n\
                     sync_partial_err:1\r\n";
        assert_eq!(syncs_served(stats), Some(5));
        assert_eq!(syncs_served("# Stats\r\nsync_full:2\r\n"), None);
    }

    #[test]
    fn only_a_new_backlog_starts_a_history_anew_not_a_promotion() {
        // Redis 7.0's answers, in order: a master that took its first replica; one promoted
        // from the replica the connection knew; failed back to (promoted again, from the
        // history of the replica that had taken over from it).
        let info = |role: &str, id: &str, previous: &str| {
            format!(
                "# Replication\r\nrole:{role}\r\nconnected_slaves:0\r\nmaster_replid:{id}\r\nmaster_replid2:{previous}\r\n"
            )
        };
        let none = "0".repeat(40);
        assert!(started_anew(&info("master", "ab1c", &none), "83bd"), "a new backlog");
        assert!(!started_anew(&info("master", "83bd", &none), "83bd"), "the same history");
        assert!(!started_anew(&info("master", "4c47", "83bd"), "83bd"), "promoted from the known");
        assert!(!started_anew(&info("master", "a3b8", "fc35"), "83bd"), "failed back to");
        assert!(!started_anew(&info("slave", "ab1c", &none), "83bd"), "a replica");
        assert!(started_anew("role:master\r\nmaster_replid:ab1c\r\n", "83bd"), "no second id said");
    }

    #[test]
    fn a_replica_that_comes_back_is_no_longer_lost() {
        let watch = ReplicaWatch::default();
        let now = Instant::now();
        watch.observed(HashSet::from([at(30004)]), None, now);
        watch.observed(HashSet::new(), None, now);
        watch.observed(HashSet::from([at(30004)]), None, now);
        assert_eq!(watch.required(), 1);
        watch.mapped(0, &HashMap::new(), &HashMap::new(), now);
        assert_eq!(watch.required(), 1, "connected");
    }
}
