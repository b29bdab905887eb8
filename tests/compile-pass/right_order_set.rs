//! The right order with service threads compiles and runs: attach a set,
//! serve on one thread per executor, destroy, drain the whole set, then drop
//! the executors.

use std::time::{Duration, Instant};

use async_executor::Executor;
use wsgate::{Config, Context, Mount, VhostConfig, protocols::Echo};

fn config() -> Config {
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .build()
        .unwrap();
    Config::builder().vhost(vhost).build().unwrap()
}

fn main() {
    let executors: Vec<Executor<'_>> = (0..2).map(|_| Executor::new()).collect();
    let ctx = Context::attach_set(&executors, config()).unwrap();
    let handle = ctx.handle();
    handle.shutdown().unwrap();
    std::thread::scope(|s| {
        for ex in &executors {
            let handle = &handle;
            s.spawn(move || async_io::block_on(ex.run(handle.shutdown_requested())));
        }
    });
    let drain = ctx.destroy();
    let report = drain.drain(&executors, Instant::now() + Duration::from_secs(5));
    drop(executors);
    assert!(report.is_clean(), "{report:?}");
}
