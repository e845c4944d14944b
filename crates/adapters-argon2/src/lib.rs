//! argon2id password hashing off the async executor, behind a bulkhead.
//!
//! Hashing takes tens of milliseconds of CPU and 19 MiB of memory. It runs on
//! `concurrency` dedicated threads, each reusing one memory block for every hash: memory
//! stays at `concurrency` × 19 MiB however many requests come, where per-call allocations
//! on a growing blocking pool would leave the allocator holding hundreds of megabytes.
//! A request that cannot get a thread within the queue timeout answers 503 instead of
//! piling up. Each job keeps the request's tracing span.
//!
//! On Linux the hashing threads run at nice [`HASHING_NICE`]: during a registration storm
//! the CPU goes to the request threads first, so that reads keep their latency while the
//! hashes take what is left (hashing alone still gets every core it can use).

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, ParamsString, PasswordHash as PhcHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use async_trait::async_trait;
use domain::ports::{HashError, PasswordHasher};
use domain::user::{Password, PasswordHash};
use tokio::sync::{Semaphore, oneshot};

/// OWASP's recommended argon2id parameters: 19 MiB, 2 passes, 1 lane.
pub const OWASP_MEMORY_KIB: u32 = 19_456;
/// Passes over memory.
pub const OWASP_ITERATIONS: u32 = 2;
/// Parallel lanes.
pub const OWASP_PARALLELISM: u32 = 1;
/// Bytes of a hash.
const OUTPUT_LENGTH: usize = 32;
/// The nice value of the hashing threads (Linux; 0 is the default, 19 the lowest priority).
/// A thread at nice 10 gets about a tenth of the CPU that a busy thread at nice 0 gets on
/// the same core, and all of it when no such thread wants the core.
pub const HASHING_NICE: i32 = 10;

/// A job for a hashing thread, given that thread's reusable memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

fn unexpected(error: impl std::fmt::Display) -> HashError {
    HashError::Unexpected(error.to_string().into())
}

/// The argon2id [`PasswordHasher`].
#[derive(Debug, Clone)]
pub struct Argon2Hasher {
    slots: Arc<Semaphore>,
    concurrency: usize,
    queue_timeout: Duration,
    jobs: SyncSender<Job>,
    /// A hash of a random password, verified against for unknown accounts.
    dummy: PasswordHash,
}

impl Argon2Hasher {
    /// A hasher running at most `concurrency` hashes at once, on as many threads. Computes
    /// its dummy hash (one hash's worth of CPU) up front, so the first unknown-account login
    /// is not faster.
    pub fn new(concurrency: usize, queue_timeout: Duration) -> Result<Self, HashError> {
        let concurrency = concurrency.max(1);
        // A slot is taken before a job is sent, so the queue never holds more than this.
        let (jobs, receiver) = std::sync::mpsc::sync_channel::<Job>(concurrency);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..concurrency {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("password-hash-{index}"))
                .spawn(move || work(&receiver))
                .map_err(unexpected)?;
        }
        let mut memory = Vec::new();
        let mut random_password = [0_u8; 32];
        OsRng.fill_bytes(&mut random_password);
        let dummy = hash_with_memory(&mut memory, &random_password)?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            queue_timeout,
            jobs,
            dummy: PasswordHash::new(dummy),
        })
    }

    /// How many hashes are computing now (for metrics).
    pub fn running(&self) -> usize {
        self.concurrency.saturating_sub(self.slots.available_permits())
    }

    /// Runs `work` on a hashing thread once a slot is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let slot = tokio::time::timeout(self.queue_timeout, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| HashError::Overloaded)?
            .map_err(|error| HashError::Unexpected(Box::new(error)))?;
        let (reply, answer) = oneshot::channel();
        let span = tracing::Span::current();
        // The slot goes with the job: a request that is dropped while its hash runs keeps the
        // slot taken until the thread is free again, so the queue never overfills.
        let job: Job = Box::new(move |memory| {
            let _ = reply.send(span.in_scope(|| work(memory)));
            drop(slot);
        });
        self.jobs.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) => HashError::Overloaded,
            TrySendError::Disconnected(_) => unexpected("the hashing threads stopped"),
        })?;
        answer.await.map_err(|_| unexpected("a hashing thread dropped its job"))?
    }
}

/// A hashing thread: lowers its own priority, then takes jobs until the hasher is dropped,
/// reusing one memory block.
fn work(jobs: &Mutex<Receiver<Job>>) {
    lower_priority();
    let mut memory = Vec::new();
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(&mut memory),
            Err(_) => return,
        }
    }
}

/// Lowers the calling thread's scheduling priority to nice [`HASHING_NICE`], once, when a
/// hashing thread starts. The threads are the hasher's own, so the value is never restored
/// (an unprivileged process could not raise it back anyway). On Linux, `setpriority` with
/// `PRIO_PROCESS` and a thread id changes that thread alone; elsewhere it would change the
/// whole process, so nothing is done. A thread already at a lower priority keeps it (an
/// operator's `nice` on the whole service). A failure leaves hashing at the normal
/// priority: it is reported once per process, and never fails a hash.
#[cfg(target_os = "linux")]
fn lower_priority() {
    static REPORTED: std::sync::Once = std::sync::Once::new();
    let thread = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(thread)).and_then(|nice| {
        if nice >= HASHING_NICE { Ok(()) } else { rustix::process::setpriority_process(Some(thread), HASHING_NICE) }
    });
    if let Err(error) = lowered {
        REPORTED.call_once(|| {
            tracing::info!(%error, nice = HASHING_NICE, "could not lower the password hashing threads' priority");
        });
    }
}

/// Per-thread priorities are Linux's: elsewhere hashing keeps the normal priority.
#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// `memory`'s first `blocks` blocks, grown once if needed. Blocks beyond the OWASP size (a
/// stored hash with more memory) are served from a temporary buffer instead, so the kept
/// block never exceeds 19 MiB.
fn with_blocks<T>(memory: &mut Vec<Block>, blocks: usize, use_blocks: impl FnOnce(&mut [Block]) -> T) -> T {
    let kept = Params::new(OWASP_MEMORY_KIB, OWASP_ITERATIONS, OWASP_PARALLELISM, None)
        .map_or(0, |params| params.block_count());
    if blocks > kept {
        return use_blocks(&mut vec![Block::default(); blocks]);
    }
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    use_blocks(&mut memory[..blocks])
}

/// Hashes `password` with a fresh salt at OWASP strength, as a PHC string.
fn hash_with_memory(memory: &mut Vec<Block>, password: &[u8]) -> Result<String, HashError> {
    let params =
        Params::new(OWASP_MEMORY_KIB, OWASP_ITERATIONS, OWASP_PARALLELISM, Some(OUTPUT_LENGTH)).map_err(unexpected)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buffer = [0u8; 64];
    let salt_bytes = salt.as_salt().decode_b64(&mut salt_buffer).map_err(unexpected)?;
    let output = with_blocks(memory, params.block_count(), |blocks| {
        Output::init_with(OUTPUT_LENGTH, |out| {
            argon2.hash_password_into_with_memory(password, salt_bytes, out, blocks).map_err(Into::into)
        })
    })
    .map_err(unexpected)?;
    let phc = PhcHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(unexpected)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Checks `password` against a stored PHC string, with the parameters stored in it (so
/// older, weaker hashes still verify). The comparison is constant-time.
fn verify_with_memory(memory: &mut Vec<Block>, password: &[u8], stored: &str) -> Result<bool, HashError> {
    let parsed = PhcHash::new(stored).map_err(unexpected)?;
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(unexpected)?;
    let version = parsed.version.map(Version::try_from).transpose().map_err(unexpected)?.unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(unexpected)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(unexpected("the stored hash has no salt or no output"));
    };
    let mut salt_buffer = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buffer).map_err(unexpected)?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let computed = with_blocks(memory, params.block_count(), |blocks| {
        Output::init_with(expected.len(), |out| {
            argon2.hash_password_into_with_memory(password, salt_bytes, out, blocks).map_err(Into::into)
        })
    })
    .map_err(unexpected)?;
    // `Output`'s equality is constant-time.
    Ok(computed == expected)
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: Password) -> Result<PasswordHash, HashError> {
        self.run(move |memory| hash_with_memory(memory, password.expose().as_bytes()).map(PasswordHash::new)).await
    }

    async fn verify(&self, password: Password, hash: PasswordHash) -> Result<bool, HashError> {
        self.run(move |memory| verify_with_memory(memory, password.expose().as_bytes(), hash.as_str())).await
    }

    fn dummy_hash(&self) -> PasswordHash {
        self.dummy.clone()
    }

    fn needs_rehash(&self, hash: &PasswordHash) -> bool {
        let Ok(parsed) = PhcHash::new(hash.as_str()) else {
            return true;
        };
        let Ok(params) = Params::try_from(&parsed) else {
            return true;
        };
        parsed.algorithm.as_str() != "argon2id"
            || parsed.version != Some(Version::V0x13.into())
            || params.m_cost() < OWASP_MEMORY_KIB
            || params.t_cost() < OWASP_ITERATIONS
            || params.p_cost() != OWASP_PARALLELISM
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher as _;

    use super::*;

    #[tokio::test]
    async fn hashes_are_owasp_argon2id_and_verify() {
        let hasher = Argon2Hasher::new(2, Duration::from_secs(5)).unwrap();
        let password = Password::parse("StrongPass123!").unwrap();
        let hash = hasher.hash(password.clone()).await.unwrap();
        assert!(hash.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", hash.as_str());
        assert!(hasher.verify(password, hash.clone()).await.unwrap());
        assert!(!hasher.verify(Password::parse("WrongPass123!").unwrap(), hash).await.unwrap());
    }

    #[tokio::test]
    async fn weaker_hashes_need_a_rehash_and_current_ones_do_not() {
        let hasher = Argon2Hasher::new(1, Duration::from_secs(5)).unwrap();
        let current = hasher.hash(Password::parse("StrongPass123!").unwrap()).await.unwrap();
        assert!(!hasher.needs_rehash(&current));
        assert!(!hasher.needs_rehash(&hasher.dummy_hash()));
        let weak = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(4096, 1, 1, None).unwrap())
            .hash_password(b"StrongPass123!", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(hasher.needs_rehash(&PasswordHash::new(weak.clone())));
        // The weak hash still verifies, so the upgrade can happen at login.
        assert!(hasher.verify(Password::parse("StrongPass123!").unwrap(), PasswordHash::new(weak)).await.unwrap());
        let argon2i = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::default())
            .hash_password(b"StrongPass123!", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(hasher.needs_rehash(&PasswordHash::new(argon2i)));
        assert!(hasher.needs_rehash(&PasswordHash::new("not a phc string".into())));
    }

    /// The nice value of the calling thread, as the kernel reports it in field 19 of
    /// `/proc/thread-self/stat` (read independently of the code under test).
    #[cfg(target_os = "linux")]
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // The fields after the command name (which may hold spaces) start with field 3.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split_whitespace().nth(19 - 3).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread")]
    async fn hashes_run_on_threads_of_lower_priority_and_other_threads_keep_theirs() {
        let before = own_nice();
        let hasher = Argon2Hasher::new(2, Duration::from_secs(5)).unwrap();
        let expected = before.max(HASHING_NICE);
        // Every hashing thread: two jobs held at once cannot run on the same thread.
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let on_thread = |barrier: Arc<std::sync::Barrier>| {
            hasher.run(move |_| {
                barrier.wait();
                Ok((own_nice(), rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()))
            })
        };
        let (first, second) = tokio::join!(on_thread(Arc::clone(&barrier)), on_thread(barrier));
        assert_eq!(first.unwrap(), (expected, expected));
        assert_eq!(second.unwrap(), (expected, expected));
        // A real hash on a lowered thread still verifies.
        let password = Password::parse("StrongPass123!").unwrap();
        let hash = hasher.hash(password.clone()).await.unwrap();
        assert!(hasher.verify(password, hash).await.unwrap());
        // Only the hashing threads: the caller's thread (and so the process) keeps its priority.
        assert_eq!(own_nice(), before);
    }

    #[tokio::test]
    async fn a_saturated_hasher_answers_overloaded_instead_of_queueing() {
        let hasher = Argon2Hasher::new(1, Duration::from_millis(1)).unwrap();
        let _held = hasher.slots.clone().acquire_owned().await.unwrap();
        let result = hasher.hash(Password::parse("StrongPass123!").unwrap()).await;
        assert!(matches!(result, Err(HashError::Overloaded)));
    }
}
