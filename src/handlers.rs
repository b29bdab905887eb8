//! Built-in HTTP handlers, and the names the configuration file knows them by:
//!
//! - `demo`: [`Demo`], the demo page (the binary mounts it at `/`);
//! - `health`: [`http::Health`](crate::http::Health), `ok` while serving and 503
//!   once draining;
//! - `ready`: [`Ready`], `ready` while serving with a reachable broker, 503
//!   otherwise;
//! - `index`: [`http::Index`](crate::http::Index), a text list of the vhost's
//!   endpoints;
//! - `metrics`: [`metrics::MetricsHandler`](crate::metrics::MetricsHandler), the
//!   counters as Prometheus text.

use crate::{HttpHandler, MountTarget, Request, Response, Vhost};

/// The demo page: one self-contained HTML file (inline CSS and JavaScript,
/// nothing fetched from elsewhere) with a panel per built-in protocol.
///
/// Each panel opens its own WebSocket to the host the page was loaded from,
/// shows its connection state and reconnects with backoff:
///
/// - `/increment`: the live counter, with a Reset button that sends `reset`;
/// - `/echo`: a message box and what came back, with the round trip;
/// - `/broadcast`: a chat with every other client on the mount;
/// - `/pubsub`: subscribe, unsubscribe and publish JSON on any topic;
/// - `/pubsub`, topic `stats`: sessions and messages per second, live;
/// - the endpoints, with commands to try them from a terminal (`curl`,
///   `websocat`) naming the page's own host.
///
/// The page assumes those paths on the same vhost, as in the binary's
/// built-in configuration; a panel whose path is not mounted shows its
/// socket closing and retrying, and while the gateway cannot be reached each
/// panel says "server unreachable, retrying in N s". Answered with `Cache-Control: no-cache`, so
/// a browser always revalidates it after the gateway is upgraded.
///
/// # Examples
///
/// ```
/// use wsgate::{Mount, VhostConfig, handlers::Demo, protocols::Echo};
///
/// # fn main() -> Result<(), wsgate::ConfigError> {
/// let vhost = VhostConfig::builder("default")
///     .listen("127.0.0.1:0".parse().unwrap())
///     .protocol(Echo)
///     .mount(Mount::http("/", Demo))
///     .mount(Mount::websocket("/echo", ["echo"]))
///     .build()?;
/// # drop(vhost);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Demo;

impl Demo {
    /// The page's HTML, as served.
    pub const HTML: &'static str = include_str!("demo.html");
}

impl HttpHandler for Demo {
    fn handle(&self, _request: &Request, _vhost: &Vhost) -> Response {
        Response::new(200)
            .header("Content-Type", "text/html; charset=utf-8")
            .header("Cache-Control", "no-cache")
            .body(Self::HTML)
    }
}

/// `/healthz`: 200 `ok` while serving, 503 once teardown has begun.
#[derive(Debug, Clone, Copy, Default)]
pub struct Health;

impl HttpHandler for Health {
    fn handle(&self, _request: &Request, vhost: &Vhost) -> Response {
        if vhost.is_serving() {
            Response::text(200, "ok\n")
        } else {
            Response::text(503, "shutting down\n")
        }
    }
}

/// `/readyz`: 200 `ready` while the context serves and its broker can do its
/// whole job; 503 while the broker's cluster bus (Redis) is unreachable, or
/// once draining. `/healthz` ([`Health`]) stays the liveness answer: a node
/// whose Redis is down still serves its own clients, but a load balancer
/// may prefer the others.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ready;

impl HttpHandler for Ready {
    fn handle(&self, _request: &Request, vhost: &Vhost) -> Response {
        match vhost.context_handle() {
            Some(h) if h.is_ready() => Response::text(200, "ready\n"),
            Some(h) if h.is_running() => Response::text(503, "broker unreachable\n"),
            _ => Response::text(503, "shutting down\n"),
        }
    }
}

/// A short text page listing the vhost's endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct Index;

impl HttpHandler for Index {
    fn handle(&self, _request: &Request, vhost: &Vhost) -> Response {
        let mut body = format!(
            "wsgate {}: vhost {}\n\nendpoints:\n",
            env!("CARGO_PKG_VERSION"),
            vhost.name()
        );
        for m in vhost.mounts() {
            let what = match m.target() {
                MountTarget::WebSocket(p) => format!("WebSocket ({})", p.join(", ")),
                MountTarget::Http(_) => "HTTP".to_owned(),
            };
            body.push_str(&format!("  {:<12} {what}\n", m.path()));
        }
        if !vhost.mounts().iter().any(|m| m.path() == "/healthz") {
            body.push_str("  /healthz     HTTP (health check)\n");
        }
        Response::text(200, body)
    }
}

/// `/metrics`: the context's [`Stats`](crate::metrics::Stats) as Prometheus text.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsHandler;

impl HttpHandler for MetricsHandler {
    fn handle(&self, _request: &Request, vhost: &Vhost) -> Response {
        match vhost.context_handle().map(|h| h.stats()) {
            Some(Ok(stats)) => Response::new(200)
                .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                .body(stats.prometheus()),
            _ => Response::text(503, "shutting down\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use super::*;
    use crate::VhostConfig;

    fn serve(handler: &impl HttpHandler) -> Response {
        let vhost = Vhost::new(
            VhostConfig::builder("t")
                .listen("127.0.0.1:0".parse().unwrap())
                .build()
                .unwrap(),
            Weak::new(),
        );
        let peer = "127.0.0.1:1".parse().unwrap();
        handler.handle(&Request::synthetic("GET", "/", &[], peer), &vhost)
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    #[test]
    fn demo_is_html_and_never_cached_stale() {
        let r = serve(&Demo);
        assert_eq!(r.status(), 200);
        let head = String::from_utf8(r.head_bytes(true, false)).unwrap();
        assert_eq!(
            header(&head, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(header(&head, "cache-control"), Some("no-cache"));
        assert_eq!(r.body_bytes().as_ref(), Demo::HTML.as_bytes());
        assert!(Demo::HTML.starts_with("<!doctype html>"));
    }

    #[test]
    fn demo_page_fetches_nothing_from_elsewhere() {
        // Self-contained: no script, style, font or image from another
        // origin (a CDN would make the page fail offline and leak visitors).
        let page = Demo::HTML.to_ascii_lowercase();
        for needle in [
            "src=\"http",
            "src='http",
            "href=\"http",
            "href='http",
            "href=\"//",
            "src=\"//",
            "url(http",
            "url(//",
            "@import",
            "<script src",
            "rel=\"stylesheet\"",
        ] {
            assert!(!page.contains(needle), "demo.html contains {needle:?}");
        }
    }

    #[test]
    fn demo_page_has_the_ids_the_browser_test_uses() {
        let ids = "inc inc-value inc-reset echo echo-input echo-send echo-log \
                   chat chat-input chat-send chat-log \
                   ps ps-topic ps-sub ps-data ps-pub ps-log \
                   status status-sessions status-rate endpoints try";
        for id in ids.split_whitespace() {
            assert!(
                Demo::HTML.contains(&format!("id=\"{id}\"")),
                "demo.html lacks id {id:?}"
            );
        }
    }
}
