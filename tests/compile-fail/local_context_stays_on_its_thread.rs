//! A context attached to a LocalExecutor is neither Send nor Sync: it cannot
//! be moved to (or shared with) another thread, unlike one attached to an
//! Executor.

use async_executor::LocalExecutor;
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
    let ex = LocalExecutor::new();
    let ctx = Context::attach_local(&ex, config()).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || drop(ctx));
    });
}
