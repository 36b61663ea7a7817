//! The tokio runtime of the serving commands (`authplane run`, `authplane dev`).

use std::num::NonZeroUsize;

use tokio::runtime::{Builder, Runtime};

/// A multi-thread runtime with `workers` worker threads (default: `TOKIO_WORKER_THREADS`,
/// else one per core): a flag where operators look, so that a replica given one core can
/// be told to use one thread instead of finding tokio's environment variable.
pub fn build(workers: Option<NonZeroUsize>) -> std::io::Result<Runtime> {
    let mut builder = Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = workers {
        builder.worker_threads(workers.get());
    }
    builder.build()
}
