//! The executors of a Context from attach_set cannot be dropped while its
//! Drain is alive, even if the drain is later run on other executors.

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
    let executors = [Executor::new(), Executor::new()];
    let others = [Executor::new(), Executor::new()];
    let ctx = Context::attach_set(&executors[..], config()).unwrap();
    let drain = ctx.destroy();
    drop(executors);
    let _report = drain.drain(&others, Instant::now());
}
