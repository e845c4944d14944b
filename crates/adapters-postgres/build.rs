//! Rebuild when a migration changes, so that the embedded migrations are never stale, and
//! fingerprint them so that test templates are rebuilt when they change.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::{fs, io};

fn hash_tree(path: &Path, hasher: &mut DefaultHasher) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(path)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        entry.file_name().hash(hasher);
        if path.is_dir() {
            hash_tree(&path, hasher)?;
        } else {
            fs::read(&path)?.hash(hasher);
        }
    }
    Ok(())
}

fn main() -> io::Result<()> {
    let migrations = Path::new("../../migrations");
    println!("cargo:rerun-if-changed={}", migrations.display());
    let mut hasher = DefaultHasher::new();
    hash_tree(migrations, &mut hasher)?;
    println!("cargo:rustc-env=MIGRATIONS_FINGERPRINT={:016x}", hasher.finish());
    Ok(())
}
