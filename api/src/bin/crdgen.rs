//! Writes the CRDs into `crds/` and the Helm chart's `charts/switchboard/crds/` (or into
//! the directories given as arguments).
//!
//! Run: `cargo run -p switchboard-api --bin crdgen`

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut dirs: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    if dirs.is_empty() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        dirs = vec![root.join("crds"), root.join("charts/switchboard/crds")];
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir)?;
        for (file, crd) in switchboard_api::crds::all() {
            let path = dir.join(file);
            std::fs::write(&path, switchboard_api::crds::to_yaml(&crd)?)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
