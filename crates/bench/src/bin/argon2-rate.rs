//! Raw argon2id throughput on this machine: one hashing thread per core, each hashing as
//! many passwords as it can for a given time, with the parameters the service stores
//! (OWASP: m = 19456 KiB, t = 2, p = 1), each thread reusing one block of memory as the
//! service's hashing threads do.
//!
//! Prints one line, `hashes_per_second <value>`, for `make bench` to read.
//!
//! Usage: `argon2-rate [seconds] [threads]` (defaults: 5 seconds, one thread per core).

use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};

/// The service's parameters: 19 MiB, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19_456;
const PASSES: u32 = 2;
const LANES: u32 = 1;
/// Bytes of a hash, as the service stores them.
const OUTPUT_BYTES: usize = 32;

fn argument<T: std::str::FromStr>(position: usize, name: &str, default: T) -> Result<T, String> {
    match std::env::args().nth(position) {
        None => Ok(default),
        Some(value) => value.parse().map_err(|_| format!("invalid {name}: {value}")),
    }
}

/// Hashes until `deadline`; returns how many hashes completed. Like the service, each
/// thread reuses one 19 MiB block of memory, so this is argon2id's compute rate, not the
/// allocator's.
fn hash_until(deadline: Instant, thread: usize) -> Result<u64, String> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, Some(OUTPUT_BYTES)).map_err(|error| error.to_string())?;
    let mut memory = vec![Block::default(); params.block_count()];
    let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    // A fixed salt per thread: the cost of argon2 does not depend on its value.
    let salt = format!("bench-salt-{thread:04}");
    let mut output = [0_u8; OUTPUT_BYTES];
    let mut count = 0_u64;
    while Instant::now() < deadline {
        let password = format!("StrongPass{count}!");
        hasher
            .hash_password_into_with_memory(password.as_bytes(), salt.as_bytes(), &mut output, &mut memory)
            .map_err(|error| error.to_string())?;
        count += 1;
    }
    Ok(count)
}

fn run() -> Result<f64, String> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let seconds: f64 = argument(1, "seconds", 5.0)?;
    let threads: usize = argument(2, "threads", cores)?;
    if !seconds.is_finite() || seconds <= 0.0 || threads == 0 {
        return Err("seconds and threads must be positive".to_owned());
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads).map(|thread| std::thread::spawn(move || hash_until(deadline, thread))).collect();
    let mut total = 0_u64;
    for worker in workers {
        total += worker.join().map_err(|_| "a hashing thread panicked".to_owned())??;
    }
    // The last hash of each thread may finish after the deadline: divide by the real time.
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(rate) => {
            println!("hashes_per_second {rate:.2}");
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("argon2-rate: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
