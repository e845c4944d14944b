//! Rebuild when a migration changes, so that the embedded migrations are never stale.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
