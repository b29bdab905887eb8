//! The strict order with a LocalExecutor: attach_local, run, destroy, drain,
//! then drop the executor.

use std::time::{Duration, Instant};

use async_executor::LocalExecutor;
use wsgate::{Config, Context, Mount, VhostConfig, protocols::Echo};

fn main() {
    let vhost = VhostConfig::builder("default")
        .listen("127.0.0.1:0".parse().unwrap())
        .protocol(Echo)
        .mount(Mount::websocket("/echo", ["echo"]))
        .build()
        .unwrap();
    let ex = LocalExecutor::new();
    let ctx = Context::attach_local(&ex, Config::builder().vhost(vhost).build().unwrap()).unwrap();
    let handle = ctx.handle();
    handle.shutdown().unwrap();
    async_io::block_on(ex.run(handle.shutdown_requested()));
    let report = ctx
        .destroy()
        .drain(&ex, Instant::now() + Duration::from_secs(1));
    assert!(report.is_clean());
    drop(ex);
}
