//! The executors of a Context from attach_set cannot be dropped while it is
//! alive.

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
    drop(executors);
    let _addrs = ctx.local_addrs();
}
