//! Write probes run before long work (streaming, training), so that an output path nobody can
//! write is found at the start and not after an hour.

use std::path::Path;

/// Checks that the file `path` can be written without changing it: an existing file is opened
/// without truncation, an absent one created and removed again (an empty file left by a run that
/// then failed would read as a run that wrote nothing).
pub fn writable_file(path: &Path) -> std::io::Result<()> {
    let existed = path.exists();
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    if !existed {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}
