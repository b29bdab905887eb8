//! The Drain returned by destroy() is #[must_use]: ignoring it is an error
//! where unused_must_use is denied.

#![deny(unused_must_use)]

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
    ctx.destroy();
}
