//! Prints the CRDs (`crdgen`), or writes one file per kind (`crdgen DIR`).

fn main() -> std::io::Result<()> {
    let crds = baton::crds::render();
    match std::env::args().nth(1) {
        Some(dir) => {
            for (file, yaml) in crds {
                std::fs::write(std::path::Path::new(&dir).join(file), yaml)?;
            }
        }
        None => {
            let docs: Vec<String> = crds.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(())
}
