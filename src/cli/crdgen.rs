//! `authplane crdgen`: the CustomResourceDefinitions as YAML.

use std::path::PathBuf;

use anyhow::Context;

use crate::api::crds::crds;

pub(crate) fn crdgen(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let crds = crds();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, yaml) in crds {
                let path = dir.join(name);
                std::fs::write(&path, yaml)
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        None => {
            let docs: Vec<String> = crds.into_iter().map(|(_, yaml)| yaml).collect();
            print!("{}", docs.join("---\n"));
        }
    }
    Ok(())
}
