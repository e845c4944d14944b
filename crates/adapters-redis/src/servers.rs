//! Where each key lives: on the one server (the URL's, or the master Redis Sentinel names),
//! or, in a Redis Cluster, on the master of the key's hash slot.
//!
//! In a cluster, every node gets a [`Connection`] of its own (its own timeout, breaker and
//! `run_id`), and a call goes to the master that the last slot map names for its keys. The
//! map (`CLUSTER SLOTS`, with `CLUSTER NODES` for each master's replicas: a change waits for
//! them, see [`crate::replicas`]) is read on first use, again after a call failed (a failover or a
//! resharding: the old owner refuses with `MOVED` or `ASK`, or does not answer) at most every
//! [`REFRESH_MIN_INTERVAL`], and at least every [`REFRESH_MAX_AGE`]. A call sent on an
//! outdated map is refused by the node or fails; it is never answered for a slot the node
//! does not own, unless the node does not know it lost the slot (its replica took over
//! while it was cut off: a split brain). Such a node still has a replica fewer than the map
//! it was routed on names, so it is not read from, and no change counts there. The `run_id` an answer carries is the answering node's, so that an entry
//! replicated to a replica that was then promoted is never served, as after a Sentinel
//! failover (see the crate's docs).
//!
//! Why not deadpool-redis's cluster pool (redis-rs's `ClusterConnection`): it follows
//! redirections and reconnects inside one call, so that the caller cannot know which server
//! process answered, which every stamp of the cache needs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::Value;

use crate::config::{RedisCacheConfig, RedisCacheError};
use crate::connection::{Connection, Request, Role, Tracking};
use crate::replicas::{Address, ReplicaWatch, read_nodes};

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16_384;

/// The shortest time between two reads of the slot map after failures.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The longest a slot map is used without being read again.
const REFRESH_MAX_AGE: Duration = Duration::from_secs(5);

/// How many call timeouts one read of the slot map may take, over all the nodes it asks.
const MAP_READ_TIMEOUTS: u32 = 3;

/// The most cluster nodes connected to (Redis Cluster's own recommended maximum).
const MAX_NODES: usize = 1_000;

/// The connection to one server.
pub(crate) type Node = Arc<Connection>;

/// The server, or the cluster's nodes, that the cache or the rate limiter calls. Each server
/// has two connections: one for every call but invalidations, and one for invalidations,
/// which `WAIT` for the replicas and so hold their connection meanwhile (a frozen replica
/// would otherwise hold up every read). The second connects only once used.
pub(crate) enum Servers {
    One { node: Node, changes: Node },
    Cluster(Box<Cluster>),
}

/// Which of a server's two connections a call takes: see [`Servers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Reads,
    Changes,
}

impl Servers {
    /// The one server, or the cluster `config` names, for `role`. Does not connect.
    pub(crate) fn build(
        config: &RedisCacheConfig,
        role: Role,
        tracking: Option<Tracking>,
    ) -> Result<Self, RedisCacheError> {
        match &config.cluster {
            None => {
                let node = Connection::build(config, role, tracking)?;
                let changes = Connection::build(config, role, None)?.sharing_breaker(&node);
                Ok(Self::One { node: Arc::new(node), changes: Arc::new(changes) })
            }
            Some(seeds) => {
                let cluster = Cluster {
                    config: config.clone(),
                    role,
                    nodes: Mutex::new(HashMap::new()),
                    change_nodes: Mutex::new(HashMap::new()),
                    seeds: seeds.clone(),
                    map: RwLock::new(None),
                    last_read: Mutex::new(None),
                    stale: Arc::new(AtomicBool::new(false)),
                    reading: tokio::sync::Mutex::new(()),
                    next_asked: AtomicUsize::new(0),
                };
                for seed in seeds {
                    cluster.node(seed)?;
                }
                Ok(Self::Cluster(Box::new(cluster)))
            }
        }
    }

    /// The one server's connection; `None` in a cluster.
    pub(crate) fn single(&self) -> Option<&Node> {
        match self {
            Self::One { node, .. } => Some(node),
            Self::Cluster(_) => None,
        }
    }

    /// The one server's connection for invalidations; `None` in a cluster.
    pub(crate) fn single_for_changes(&self) -> Option<&Node> {
        match self {
            Self::One { changes, .. } => Some(changes),
            Self::Cluster(_) => None,
        }
    }

    /// The connection to the server that holds `key`; `None` when no node is known to own
    /// its slot (the map could not be read).
    pub(crate) async fn route(&self, key: &str) -> Option<Node> {
        match self {
            Self::One { node, .. } => Some(Arc::clone(node)),
            Self::Cluster(cluster) => cluster.map().await?.owner(key, Lane::Reads),
        }
    }

    /// `items` grouped by the server that holds their key, in their order within a group;
    /// the items whose slot no node is known to own come back apart.
    pub(crate) async fn group<T>(&self, items: impl IntoIterator<Item = (String, T)>) -> Grouped<T> {
        self.group_in(Lane::Reads, items).await
    }

    /// [`Self::group`], on the connections for invalidations.
    pub(crate) async fn group_for_changes<T>(&self, items: impl IntoIterator<Item = (String, T)>) -> Grouped<T> {
        self.group_in(Lane::Changes, items).await
    }

    async fn group_in<T>(&self, lane: Lane, items: impl IntoIterator<Item = (String, T)>) -> Grouped<T> {
        let mut grouped = Grouped { groups: Vec::new(), unrouted: Vec::new() };
        let map = match self {
            Self::One { node, changes } => {
                let node = if lane == Lane::Changes { changes } else { node };
                grouped.groups.push((Arc::clone(node), items.into_iter().map(|(_, item)| item).collect()));
                return grouped;
            }
            Self::Cluster(cluster) => cluster.map().await,
        };
        let mut index: HashMap<*const Connection, usize> = HashMap::new();
        for (key, item) in items {
            match map.as_ref().and_then(|map| map.owner(&key, lane)) {
                Some(node) => {
                    let at = *index.entry(Arc::as_ptr(&node)).or_insert_with(|| {
                        grouped.groups.push((node, Vec::new()));
                        grouped.groups.len() - 1
                    });
                    grouped.groups[at].1.push(item);
                }
                None => grouped.unrouted.push(item),
            }
        }
        grouped
    }

    /// Every master (the one server); `None` in a cluster whose map could not be read.
    pub(crate) async fn masters(&self) -> Option<Vec<Node>> {
        match self {
            Self::One { node, .. } => Some(vec![Arc::clone(node)]),
            Self::Cluster(cluster) => Some(cluster.map().await?.masters.clone()),
        }
    }

    /// Whether some server's circuit breaker currently skips it (for metrics).
    pub(crate) fn is_bypassed(&self) -> bool {
        match self {
            Self::One { node, .. } => node.breaker.is_open(),
            Self::Cluster(cluster) => cluster.known().iter().any(|node| node.breaker.is_open()),
        }
    }

    /// Whether a connection is held to every server used (for debug output).
    pub(crate) fn is_connected(&self) -> bool {
        match self {
            Self::One { node, .. } => node.is_connected(),
            Self::Cluster(cluster) => cluster
                .map
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .as_ref()
                .is_some_and(|map| map.masters.iter().all(|node| node.is_connected())),
        }
    }

    /// The server's URL without its password, or the cluster's seed nodes.
    pub(crate) fn redacted_url(&self) -> String {
        match self {
            Self::One { node, .. } => node.redacted_url.clone(),
            Self::Cluster(cluster) => {
                let seeds: Vec<String> = cluster.seeds.iter().map(|(host, port)| format!("{host}:{port}")).collect();
                format!("redis cluster {}", seeds.join(","))
            }
        }
    }
}

/// Items grouped by server: see [`Servers::group`].
pub(crate) struct Grouped<T> {
    pub(crate) groups: Vec<(Node, Vec<T>)>,
    pub(crate) unrouted: Vec<T>,
}

/// A Redis Cluster's nodes and its slot map.
pub(crate) struct Cluster {
    config: RedisCacheConfig,
    role: Role,
    /// The configured nodes (named in the logs; asked for the map like every node seen).
    seeds: Vec<(String, u16)>,
    /// Every node seen, masters and replicas, by address: any of them may be asked for the map.
    nodes: Mutex<HashMap<(String, u16), Node>>,
    /// The masters' connections for invalidations, by address.
    change_nodes: Mutex<HashMap<(String, u16), Node>>,
    map: RwLock<Option<Arc<SlotMap>>>,
    /// When the map was last read (or tried).
    last_read: Mutex<Option<Instant>>,
    /// Set by every node's failed call: the map is read again, at most every
    /// [`REFRESH_MIN_INTERVAL`].
    stale: Arc<AtomicBool>,
    /// Held while the map is read, so that one read serves every call that wants it.
    reading: tokio::sync::Mutex<()>,
    /// Where the next read of the map starts among the nodes, so that one node with an
    /// outdated view is not asked first every time.
    next_asked: AtomicUsize,
}

impl Cluster {
    /// The connection to the node at `address`, made (without connecting) when new.
    fn node(&self, (host, port): &(String, u16)) -> Result<Node, RedisCacheError> {
        let mut nodes = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(node) = nodes.get(&(host.clone(), *port)) {
            return Ok(Arc::clone(node));
        }
        if nodes.len() >= MAX_NODES {
            return Err(RedisCacheError::Invalid("the cluster names more than 1,000 nodes"));
        }
        let watch = Arc::new(ReplicaWatch::default());
        let node =
            Arc::new(Connection::build_node(&self.config, (host, *port), self.role, Arc::clone(&self.stale), watch)?);
        nodes.insert((host.clone(), *port), Arc::clone(&node));
        Ok(node)
    }

    /// The connection for invalidations to the node at `address` (sharing the breaker of its
    /// other connection), made (without connecting) when new.
    fn change_node(&self, (host, port): &(String, u16)) -> Result<Node, RedisCacheError> {
        let reads = self.node(&(host.clone(), *port))?;
        let mut nodes = self.change_nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(node) = nodes.get(&(host.clone(), *port)) {
            return Ok(Arc::clone(node));
        }
        if nodes.len() >= MAX_NODES {
            return Err(RedisCacheError::Invalid("the cluster names more than 1,000 nodes"));
        }
        let watch = reads.replica_watch().map_or_else(Default::default, Arc::clone);
        let node = Connection::build_node(&self.config, (host, *port), self.role, Arc::clone(&self.stale), watch)?;
        let node = Arc::new(node.sharing_breaker(&reads));
        nodes.insert((host.clone(), *port), Arc::clone(&node));
        Ok(node)
    }

    fn known(&self) -> Vec<Node> {
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect()
    }

    fn current(&self) -> Option<Arc<SlotMap>> {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The slot map, read first when it is due (see the module's docs). Only one call reads
    /// it at a time; the others use the map they have, if any, without waiting.
    async fn map(&self) -> Option<Arc<SlotMap>> {
        let current = self.current();
        let since = self.last_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map(|at| at.elapsed());
        let due = match since {
            None => true,
            Some(since) => {
                since >= REFRESH_MAX_AGE
                    || (since >= REFRESH_MIN_INTERVAL && (current.is_none() || self.stale.load(Ordering::Relaxed)))
            }
        };
        if !due {
            return current;
        }
        // Without a map, a call does not wait for another's read either: it is answered as in
        // an outage (a read from the store), never held up by dead nodes.
        let Ok(_reading) = self.reading.try_lock() else { return current };
        // Bounded: a few nodes that hang each use up a timeout; the next read starts elsewhere.
        let bound = self.config.timeout * MAP_READ_TIMEOUTS;
        if tokio::time::timeout(bound, self.read_map()).await.is_err() {
            self.stale.store(true, Ordering::Relaxed);
        }
        self.current()
    }

    /// Asks the nodes in turn for `CLUSTER SLOTS` and `CLUSTER NODES` (those whose breaker is
    /// closed first, then the others despite it: the map is what lets the service leave a
    /// dead node) and keeps the first complete answer; without one, the map stays due.
    async fn read_map(&self) {
        *self.last_read.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
        self.stale.store(false, Ordering::Relaxed);
        let mut asked: Vec<((String, u16), Node)> = {
            let nodes = self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            nodes.iter().map(|(address, node)| (address.clone(), Arc::clone(node))).collect()
        };
        asked.sort_by(|a, b| a.0.cmp(&b.0));
        let start = self.next_asked.fetch_add(1, Ordering::Relaxed) % asked.len().max(1);
        asked.rotate_left(start);
        // Stable: the rotation still decides among nodes alike.
        asked.sort_by_key(|(_, node)| node.breaker.is_open());
        let mut pipeline = redis::pipe();
        pipeline.cmd("CLUSTER").arg("SLOTS").cmd("CLUSTER").arg("NODES");
        for ((host, _), node) in asked {
            let Some((slots, nodes)) = node.run_despite_breaker::<(Value, String)>(Request::Pipeline(&pipeline)).await
            else {
                continue;
            };
            let (known_replicas, seen) = read_nodes(&nodes);
            match self.slot_map(&slots, &known_replicas, &host) {
                Some(map) => {
                    // Which replicas each master said follow it, and when: one that left a
                    // master and follows another since is not lost (see `crate::replicas`).
                    let following: Vec<_> = map
                        .masters
                        .iter()
                        .map(|master| master.replica_watch().map(|watch| watch.following()))
                        .collect();
                    let now = Instant::now();
                    for (index, (master, replicas)) in map.masters.iter().zip(&map.replicas).enumerate() {
                        let mut elsewhere: HashMap<Address, Instant> = HashMap::new();
                        let others = following.iter().enumerate().filter(|(other, _)| *other != index);
                        for (observed, addresses) in others.filter_map(|(_, following)| following.as_ref()) {
                            let Some(observed) = observed else { continue };
                            for address in addresses {
                                let latest = elsewhere.entry(address.clone()).or_insert(*observed);
                                *latest = (*latest).max(*observed);
                            }
                        }
                        // Its changes' connection shares the watch.
                        if let Some(watch) = master.replica_watch() {
                            watch.mapped(*replicas, &seen, &elsewhere, now);
                        }
                    }
                    *self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(map));
                    return;
                }
                None => tracing::debug!(node = %node.redacted_url, "CLUSTER SLOTS answered no usable map"),
            }
        }
        self.stale.store(true, Ordering::Relaxed);
    }

    /// The map a `CLUSTER SLOTS` answer describes, asked of a node on `asked_host` (a node
    /// named without an address is on it), each master with the replicas `known_replicas`
    /// (by master id, from `CLUSTER NODES`) counts for it if more than the answer lists;
    /// `None` when the answer does not parse.
    fn slot_map(&self, slots: &Value, known_replicas: &HashMap<&str, usize>, asked_host: &str) -> Option<SlotMap> {
        let Value::Array(ranges) = slots else { return None };
        let mut owners = vec![NO_OWNER; SLOTS].into_boxed_slice();
        let mut masters: Vec<Node> = Vec::new();
        let mut changes: Vec<Node> = Vec::new();
        let mut replicas: Vec<usize> = Vec::new();
        for range in ranges {
            let Value::Array(fields) = range else { return None };
            let (Some(Value::Int(first)), Some(Value::Int(last))) = (fields.first(), fields.get(1)) else {
                return None;
            };
            let (first, last) = (usize::try_from(*first).ok()?, usize::try_from(*last).ok()?);
            if first > last || last >= SLOTS {
                return None;
            }
            // Every replica counts, with an address or not (one may be promoted), listed or not
            // (`CLUSTER SLOTS` leaves out one whose offset the asked node last heard as 0).
            let known = fields.get(2).and_then(node_id).and_then(|id| known_replicas.get(id)).copied();
            let named_replicas = fields.len().saturating_sub(3).max(known.unwrap_or(0));
            let mut servers = fields[2..].iter().filter_map(|server| address(server, asked_host));
            let master_address = servers.next()?;
            let master = self.node(&master_address).ok()?;
            // Replicas are remembered as nodes to ask for the map: one of them is the next
            // master after a failover.
            for replica in servers {
                let _ = self.node(&replica);
            }
            let index = match masters.iter().position(|known| Arc::ptr_eq(known, &master)) {
                Some(index) => index,
                None => {
                    masters.push(master);
                    changes.push(self.change_node(&master_address).ok()?);
                    replicas.push(0);
                    masters.len() - 1
                }
            };
            replicas[index] = replicas[index].max(named_replicas);
            owners[first..=last].fill(u16::try_from(index).ok()?);
        }
        // A node that left the cluster (removed, or `CLUSTER RESET`) answers that no master
        // serves anything: not a map to route by.
        if masters.is_empty() {
            return None;
        }
        Some(SlotMap { owners, masters, changes, replicas })
    }
}

/// A node's address in a `CLUSTER SLOTS` answer (`[host, port, id, …]`); an empty host is
/// `asked_host`'s, and `?` (unknown) is no address.
fn address(server: &Value, asked_host: &str) -> Option<(String, u16)> {
    let Value::Array(fields) = server else { return None };
    let host = match fields.first()? {
        Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
        Value::SimpleString(host) => host.clone(),
        _ => return None,
    };
    let Value::Int(port) = fields.get(1)? else { return None };
    let host = if host.is_empty() { asked_host.to_owned() } else { host };
    (host != "?").then_some(())?;
    Some((host, u16::try_from(*port).ok().filter(|&port| port > 0)?))
}

/// A node's id in a `CLUSTER SLOTS` answer (`[host, port, id, …]`).
fn node_id(server: &Value) -> Option<&str> {
    let Value::Array(fields) = server else { return None };
    match fields.get(2)? {
        Value::BulkString(id) => std::str::from_utf8(id).ok(),
        Value::SimpleString(id) => Some(id),
        _ => None,
    }
}

/// Marks a slot no master serves.
const NO_OWNER: u16 = u16::MAX;

/// Which master serves each slot, and how many replicas the cluster names for each master
/// (it leaves out those it agrees have failed).
struct SlotMap {
    /// By slot, the index of its master in `masters`, or [`NO_OWNER`].
    owners: Box<[u16]>,
    masters: Vec<Node>,
    /// By master, as `masters`: its connection for invalidations.
    changes: Vec<Node>,
    /// By master, as `masters`.
    replicas: Vec<usize>,
}

impl SlotMap {
    fn owner(&self, key: &str, lane: Lane) -> Option<Node> {
        let owner = usize::from(*self.owners.get(usize::from(slot(key.as_bytes())))?);
        match lane {
            Lane::Reads => self.masters.get(owner).cloned(),
            Lane::Changes => self.changes.get(owner).cloned(),
        }
    }
}

/// The hash slot of `key`: CRC16 (XMODEM) of its hash tag (the part between the first `{`
/// and the next `}`, when not empty), else of the whole key, modulo 16,384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tag = key.iter().position(|&byte| byte == b'{').and_then(|open| {
        let after = &key[open + 1..];
        let close = after.iter().position(|&byte| byte == b'}')?;
        (close > 0).then(|| &after[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(key)) % 16_384
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use redis::Value;

    use super::Servers;
    use crate::config::RedisCacheConfig;
    use crate::connection::Role;

    #[tokio::test]
    async fn an_answer_in_which_no_master_serves_a_slot_is_no_map() {
        let mut config = RedisCacheConfig::new("redis://127.0.0.1:1");
        config.cluster = Some(vec![("127.0.0.1".to_owned(), 1)]);
        let role = Role { name: "test", degraded: "", identify_server: false };
        let Ok(Servers::Cluster(cluster)) = Servers::build(&config, role, None) else { panic!("a cluster") };
        assert!(cluster.slot_map(&Value::Array(Vec::new()), &HashMap::new(), "127.0.0.1").is_none());
        let node = |port: i64| Value::Array(vec![Value::BulkString(b"127.0.0.1".to_vec()), Value::Int(port)]);
        let one_range = Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(16_383), node(7000)])]);
        assert!(cluster.slot_map(&one_range, &HashMap::new(), "127.0.0.1").is_some());
    }
}
