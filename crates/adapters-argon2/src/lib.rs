//! argon2id password hashing off the async executor, behind a bulkhead.
//!
//! Hashing takes tens of milliseconds of CPU and 19 MiB of memory. It runs on
//! `concurrency` dedicated threads, each reusing one memory block for every hash: memory
//! stays at `concurrency` × 19 MiB however many requests come, where per-call allocations
//! on a growing blocking pool would leave the allocator holding hundreds of megabytes.
//! A request that cannot get a thread within the queue timeout answers 503 instead of
//! piling up. Each job keeps the request's tracing span.
//!
//! Hashes share the CPU with the requests by how many run at once, not by priority: all
//! `concurrency` threads hash while hashes run uncontended, one at a time while they do not
//! (a hash whose wall time is well above the CPU time its thread got: it waited for a core,
//! as during a registration storm among reads). See [`Admission`]. Measured on two cores
//! shared with the load generator (2026-12-02, the README's performance section), a storm
//! took the cached GET's p99 to 1.7× its idle value with one hash at a time against 2.2×
//! with two; two hashing threads at a lower priority (nice 10) did worse than one at the
//! normal priority on both the p99 (2.5×) and the registrations completed.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{Output, ParamsString, PasswordHash as PhcHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use async_trait::async_trait;
use domain::ports::{HashError, PasswordHasher};
use domain::user::{Password, PasswordHash};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// OWASP's recommended argon2id parameters: 19 MiB, 2 passes, 1 lane.
pub const OWASP_MEMORY_KIB: u32 = 19_456;
/// Passes over memory.
pub const OWASP_ITERATIONS: u32 = 2;
/// Parallel lanes.
pub const OWASP_PARALLELISM: u32 = 1;
/// Bytes of a hash.
const OUTPUT_LENGTH: usize = 32;
/// A job for a hashing thread, given that thread's reusable memory.
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

fn unexpected(error: impl std::fmt::Display) -> HashError {
    HashError::Unexpected(error.to_string().into())
}

/// The argon2id [`PasswordHasher`].
#[derive(Debug, Clone)]
pub struct Argon2Hasher {
    slots: Arc<Semaphore>,
    admission: Arc<Admission>,
    queue_timeout: Duration,
    jobs: SyncSender<Job>,
    /// A hash of a random password, verified against for unknown accounts.
    dummy: PasswordHash,
}

impl Argon2Hasher {
    /// A hasher running at most `concurrency` hashes at once, on as many threads.
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
        let dummy = random_phc_string()?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            admission: Arc::new(Admission::new(concurrency)),
            queue_timeout,
            jobs,
            dummy: PasswordHash::new(dummy),
        })
    }

    /// How many hashes are computing now (for metrics).
    pub fn running(&self) -> usize {
        self.admission.limit().saturating_sub(self.slots.available_permits())
    }

    /// How many hashes may run at once now (see [`Admission`]).
    pub fn admitted(&self) -> usize {
        self.admission.limit()
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
        let (admission, slots) = (Arc::clone(&self.admission), Arc::clone(&self.slots));
        // The slot goes with the job: a request that is dropped while its hash runs keeps the
        // slot taken until the thread is free again, so the queue never overfills.
        let job: Job = Box::new(move |memory| {
            let (started, cpu_before) = (Instant::now(), thread_cpu_time());
            let outcome = span.in_scope(|| work(memory));
            let cpu = thread_cpu_time().zip(cpu_before).map(|(after, before)| after.saturating_sub(before));
            admission.observe(started.elapsed(), cpu, slot, &slots);
            let _ = reply.send(outcome);
        });
        self.jobs.try_send(job).map_err(|error| match error {
            TrySendError::Full(_) => HashError::Overloaded,
            TrySendError::Disconnected(_) => unexpected("the hashing threads stopped"),
        })?;
        answer.await.map_err(|_| unexpected("a hashing thread dropped its job"))?
    }
}

/// A hashing thread: takes jobs until the hasher is dropped, reusing one memory block.
fn work(jobs: &Mutex<Receiver<Job>>) {
    let mut memory = Vec::new();
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        match job {
            Ok(job) => job(&mut memory),
            Err(_) => return,
        }
    }
}

/// The CPU time the calling thread has used (Linux); `None` elsewhere, where hashes are
/// never seen contended and all threads hash.
#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Option<Duration> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(Duration::new(u64::try_from(now.tv_sec).ok()?, u32::try_from(now.tv_nsec).ok()?))
}

#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

/// How many hashes may run at once: all threads while hashes get the CPU they want, one
/// while they wait for it. A hash that took more than [`CONTENDED`] times the CPU time its
/// thread got lowers the limit by one (to one at least); one that took less than
/// [`UNCONTENDED`] times raises it by one, up to `concurrency`; in between, it stays. One
/// hash is enough to decide either way: a hash is tens of milliseconds, and a storm's start
/// or end shows in the next one.
///
/// The limit is applied to the slots: lowering it takes a free slot away (or, when every slot
/// is taken, the finishing hash's own), raising it gives one back.
#[derive(Debug)]
struct Admission {
    concurrency: usize,
    /// Locked while the limit and the slots change together.
    limit: Mutex<usize>,
}

/// Wall time above this multiple of CPU time: the thread waited for a core half the time or
/// more. Lower, the registrations' own request and database work (a tenth of the machine)
/// would already count as contention, and registrations alone would not use every core.
const CONTENDED: f64 = 2.0;
/// Wall time below this multiple of CPU time: the thread had a core nearly all along.
const UNCONTENDED: f64 = 1.2;
/// Jobs using less CPU than this leave the limit as it is (a hash takes tens of milliseconds).
const SHORTEST_READING: Duration = Duration::from_millis(1);

/// What one hash's timings say about the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Lower,
    Keep,
    Raise,
}

impl Admission {
    fn new(concurrency: usize) -> Self {
        Self { concurrency, limit: Mutex::new(concurrency) }
    }

    fn limit(&self) -> usize {
        *self.limit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn verdict(wall: Duration, cpu: Option<Duration>) -> Verdict {
        // A job this short (a stored hash that does not parse) says nothing about the cores.
        let Some(cpu) = cpu.filter(|cpu| *cpu >= SHORTEST_READING) else { return Verdict::Keep };
        let stretch = wall.as_secs_f64() / cpu.as_secs_f64();
        if stretch > CONTENDED {
            Verdict::Lower
        } else if stretch < UNCONTENDED {
            Verdict::Raise
        } else {
            Verdict::Keep
        }
    }

    /// Adjusts the limit after a hash that took `wall` and used `cpu`, then releases its
    /// `slot` to `slots` (or keeps it out, when that is how the limit was lowered).
    fn observe(&self, wall: Duration, cpu: Option<Duration>, slot: OwnedSemaphorePermit, slots: &Semaphore) {
        let mut limit = self.limit.lock().unwrap_or_else(PoisonError::into_inner);
        match Self::verdict(wall, cpu) {
            Verdict::Lower if *limit > 1 => {
                *limit -= 1;
                if slots.forget_permits(1) == 0 {
                    slot.forget();
                }
            }
            Verdict::Raise if *limit < self.concurrency => {
                *limit += 1;
                slots.add_permits(1);
            }
            _ => {}
        }
    }
}

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

/// The parameters of new hashes (and of the dummy): OWASP's, with a 32-byte output.
fn owasp_params() -> Result<Params, HashError> {
    Params::new(OWASP_MEMORY_KIB, OWASP_ITERATIONS, OWASP_PARALLELISM, Some(OUTPUT_LENGTH)).map_err(unexpected)
}

/// Hashes `password` with a fresh salt at OWASP strength, as a PHC string.
fn hash_with_memory(memory: &mut Vec<Block>, password: &[u8]) -> Result<String, HashError> {
    let params = owasp_params()?;
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
    phc_string(&params, &salt, output)
}

/// An argon2id PHC string at OWASP strength.
fn phc_string(params: &Params, salt: &SaltString, output: Output) -> Result<String, HashError> {
    let phc = PhcHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(unexpected)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// The dummy hash unknown accounts are verified against: current parameters, a random salt
/// and a random output. Verifying a password against it costs what verifying against a
/// stored hash does, and no password matches it (as none is known for a hash of a random
/// one); it is drawn, not computed, so a start costs no hash and keeps no 19 MiB block.
fn random_phc_string() -> Result<String, HashError> {
    let params = owasp_params()?;
    let mut output = [0_u8; OUTPUT_LENGTH];
    OsRng.fill_bytes(&mut output);
    phc_string(&params, &SaltString::generate(&mut OsRng), Output::new(&output).map_err(unexpected)?)
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

    /// An unknown account's login verifies against the dummy: the same parameters as a real
    /// hash (so the same work), a salt of its own, and no password that matches.
    #[tokio::test]
    async fn the_dummy_hash_costs_what_a_real_one_does_and_matches_no_password() {
        let (hasher, other) = (
            Argon2Hasher::new(1, Duration::from_secs(5)).unwrap(),
            Argon2Hasher::new(1, Duration::from_secs(5)).unwrap(),
        );
        let password = Password::parse("StrongPass123!").unwrap();
        let real = hasher.hash(password.clone()).await.unwrap();
        let (dummy, real) = (PhcHash::new(hasher.dummy.as_str()).unwrap(), PhcHash::new(real.as_str()).unwrap());
        assert_eq!((dummy.algorithm, dummy.version, &dummy.params), (real.algorithm, real.version, &real.params));
        assert_eq!(dummy.hash.map(|output| output.len()), real.hash.map(|output| output.len()));
        assert_ne!(hasher.dummy.as_str(), other.dummy.as_str(), "each instance draws its own");
        assert!(!hasher.verify(password, hasher.dummy_hash()).await.unwrap());
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

    #[test]
    fn a_hash_that_waited_for_a_core_lowers_the_limit_and_one_that_did_not_raises_it() {
        let ms = Duration::from_millis;
        assert_eq!(Admission::verdict(ms(61), Some(ms(30))), Verdict::Lower);
        assert_eq!(Admission::verdict(ms(59), Some(ms(30))), Verdict::Keep);
        assert_eq!(Admission::verdict(ms(40), Some(ms(30))), Verdict::Keep);
        assert_eq!(Admission::verdict(ms(31), Some(ms(30))), Verdict::Raise);
        assert_eq!(Admission::verdict(ms(60), None), Verdict::Keep, "no CPU time: no decision");
        let us = Duration::from_micros;
        assert_eq!(Admission::verdict(us(900), Some(us(200))), Verdict::Keep, "too short to tell");

        let slots = Arc::new(Semaphore::new(2));
        let admission = Admission::new(2);
        let (first, second) = (slots.clone().try_acquire_owned().unwrap(), slots.clone().try_acquire_owned().unwrap());
        // Lowered while both slots are taken: the finishing hash's slot is kept out.
        admission.observe(ms(90), Some(ms(30)), first, &slots);
        assert_eq!((admission.limit(), slots.available_permits()), (1, 0));
        // Never below one.
        let third = slots.clone().try_acquire_owned();
        assert!(third.is_err(), "a second hash was admitted");
        admission.observe(ms(90), Some(ms(30)), second, &slots);
        assert_eq!((admission.limit(), slots.available_permits()), (1, 1));
        // Raised again by an uncontended hash: its slot and another are free.
        let only = slots.clone().try_acquire_owned().unwrap();
        admission.observe(ms(30), Some(ms(30)), only, &slots);
        assert_eq!((admission.limit(), slots.available_permits()), (2, 2));
        // Up to the concurrency only.
        let one = slots.clone().try_acquire_owned().unwrap();
        admission.observe(ms(30), Some(ms(30)), one, &slots);
        assert_eq!((admission.limit(), slots.available_permits()), (2, 2));
    }

    /// Busy threads on every core, as the request threads of a registration storm among reads
    /// are: hashing falls to one at a time, and a hash still completes and verifies.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread")]
    async fn hashes_run_one_at_a_time_while_other_threads_want_every_core() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let hasher = Argon2Hasher::new(cores.max(2), Duration::from_secs(30)).unwrap();
        assert_eq!(hasher.admitted(), cores.max(2));
        /// Threads spinning until dropped (also when the test fails).
        struct Spinners(Arc<AtomicBool>);
        impl Drop for Spinners {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let spinners = Spinners(Arc::new(AtomicBool::new(false)));
        // Four busy threads a core, all spinning before the first hash: a hashing thread then
        // gets a fifth of a core or so, far from the 5/6 that would read as uncontended. With
        // three a core, started as the hashes were, a CI run once ended with two admitted (a
        // last hash had a core to itself long enough to raise the limit again).
        let spinning = Arc::new(AtomicUsize::new(0));
        let spinner_count = cores * 4;
        for _ in 0..spinner_count {
            let (stop, spinning) = (Arc::clone(&spinners.0), Arc::clone(&spinning));
            std::thread::spawn(move || {
                spinning.fetch_add(1, Ordering::Relaxed);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        while spinning.load(Ordering::Relaxed) < spinner_count {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let password = Password::parse("StrongPass123!").unwrap();
        // Started together, as a storm's registrations are.
        let mut running = tokio::task::JoinSet::new();
        for _ in 0..cores * 2 {
            let (hasher, password) = (hasher.clone(), password.clone());
            running.spawn(async move { hasher.hash(password).await });
        }
        let mut hashes = Vec::new();
        while let Some(done) = running.join_next().await {
            hashes.push(done.unwrap().unwrap());
        }
        let admitted = hasher.admitted();
        drop(spinners);
        assert_eq!(admitted, 1, "hashes kept every thread while the cores were busy");
        assert!(hasher.verify(password, hashes.pop().unwrap()).await.unwrap());
    }

    #[tokio::test]
    async fn a_saturated_hasher_answers_overloaded_instead_of_queueing() {
        let hasher = Argon2Hasher::new(1, Duration::from_millis(1)).unwrap();
        let _held = hasher.slots.clone().acquire_owned().await.unwrap();
        let result = hasher.hash(Password::parse("StrongPass123!").unwrap()).await;
        assert!(matches!(result, Err(HashError::Overloaded)));
    }
}
