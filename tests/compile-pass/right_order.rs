//! The right order compiles and runs: attach, serve, destroy, drain, then
//! drop the executor.

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
    let ex = Executor::new();
    let ctx = Context::attach(&ex, config()).unwrap();
    let handle = ctx.handle();
    handle.shutdown().unwrap();
    async_io::block_on(ex.run(handle.shutdown_requested()));
    let drain = ctx.destroy();
    let report = drain.drain(&ex, Instant::now() + Duration::from_secs(5));
    drop(ex);
    assert!(report.is_clean(), "{report:?}");
}
