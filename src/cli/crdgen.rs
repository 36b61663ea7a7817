//! `authplane crdgen`: the CustomResourceDefinitions as YAML.

use std::path::PathBuf;

use crate::api::crds::crds;
use crate::cli::error::CliError;

pub(crate) fn crdgen(out_dir: Option<PathBuf>) -> Result<(), CliError> {
    let crds = crds();
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|source| CliError::Io {
                doing: "creating",
                path: dir.clone(),
                source,
            })?;
            for (name, yaml) in crds {
                let path = dir.join(name);
                std::fs::write(&path, yaml).map_err(|source| CliError::Io {
                    doing: "writing",
                    path: path.clone(),
                    source,
                })?;
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
