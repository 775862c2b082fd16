//! Worker event loops: one single-threaded tokio runtime per core, each serving its
//! own `SO_REUSEPORT` socket, and which of them the current thread is.

use std::cell::Cell;

use tokio::runtime::Handle;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// Which worker loop this thread is (0 outside workers): upstream pools keep one idle
/// list per loop.
pub fn index() -> usize {
    WORKER.with(Cell::get)
}

/// Starts `n` single-threaded event loops on their own threads; they run until exit.
pub fn spawn(n: usize) -> std::io::Result<Vec<Handle>> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("manifold-worker-{i}"))
            .spawn(move || {
                WORKER.with(|w| w.set(i));
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("a worker thread died while starting"))??;
        handles.push(handle);
    }
    Ok(handles)
}
