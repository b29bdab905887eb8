//! The executor cannot be dropped while the Drain borrowing it is alive, even
//! if the drain is later run on another executor.

use std::time::Instant;

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
    let other = Executor::new();
    let ctx = Context::attach(&ex, config()).unwrap();
    let drain = ctx.destroy();
    drop(ex);
    let _report = drain.drain(&other, Instant::now());
}
