//! Admission: one pure decision from a request head and a listener's
//! routing table to what happens next. `Host` picks the vhost, the path the
//! mount; an HTTP mount answers GET and HEAD; a WebSocket mount checks the
//! upgrade (RFC 6455 §4.2.1), the `Origin`, the subprotocol and the bearer
//! token, and says which protocol speaks.
//!
//! What admission cannot decide is left to the caller, which holds the live
//! state: whether the context still serves, the session limits (counters),
//! the extension negotiation, and the application's own `open`.
//!
//! The connection code calls [`admit`]; so does the `request_head` fuzz
//! target, on the same table type, so that what is fuzzed is what runs.

use std::sync::Arc;

use super::http::{Refused, Request, Upgrade, check_bearer, check_upgrade, negotiate};
use super::tls::pick_site;

/// A listener's routing table: its vhosts in configuration order. The first
/// vhost without `Host` names is the default (else the first).
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub(crate) sites: Vec<Site>,
}

/// One vhost as admission sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Site {
    /// The `Host` names it answers to, lowercase, without port.
    pub(crate) hosts: Vec<String>,
    /// The allowed `Origin`s, normalised (lowercase, no trailing `/`); empty
    /// allows any.
    pub(crate) origins: Vec<String>,
    /// Its mounts, in configuration order.
    pub(crate) mounts: Vec<Route>,
    /// The bearer token each protocol requires, if any: `(protocol, token)`.
    pub(crate) tokens: Vec<(String, String)>,
}

/// One mount.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Shared with the sessions opened on it whose request path is this
    /// one (what a session's `path` usually is), which then carry no copy.
    pub(crate) path: Arc<str>,
    /// Also serves every path below `path`.
    pub(crate) prefix: bool,
    /// The protocols a WebSocket mount speaks (the first is the default);
    /// `None` for an HTTP mount.
    pub(crate) protocols: Option<Vec<String>>,
}

impl Route {
    /// The path a session opened on this mount keeps: the mount's own,
    /// shared, when the request asked for exactly it; a copy otherwise (a
    /// path below a prefix mount).
    pub(crate) fn session_path(&self, path: &str) -> Arc<str> {
        if *self.path == *path {
            self.path.clone()
        } else {
            path.into()
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Answer with the HTTP handler of mount `mount` of site `site`.
    Http { site: usize, mount: usize },
    /// Answer `/healthz`, which no mount claims, with the built-in health
    /// check of site `site`.
    Health { site: usize },
    /// Upgrade to a session of protocol `protocol` on mount `mount` of site
    /// `site`. `echo`: the client offered it, so the `101` names it.
    Upgrade {
        site: usize,
        mount: usize,
        protocol: String,
        echo: bool,
        upgrade: Upgrade,
    },
    /// Refuse, with the reason that maps to the answer.
    Refuse(Refused),
}

/// Decides what `request` gets on a listener routed by `table`.
#[must_use = "admission only decides; the caller acts on the decision"]
pub(crate) fn admit(request: &Request, table: &Table) -> Admission {
    let Some(site) = route(table, request) else {
        return Admission::Refuse(Refused::NoVhost);
    };
    // On a TLS listener the certificate was chosen by SNI, before the
    // `Host` was known: a request for another vhost than the one the client
    // verified must not be served with it (RFC 9110 §15.5.20).
    if let Some(tls) = request.tls()
        && site_for_name(table, tls.sni()) != Some(site)
    {
        return Admission::Refuse(Refused::Misdirected);
    }
    let s = &table.sites[site];
    let Some(mount) = find_mount(&s.mounts, request.path()) else {
        return if request.path() == "/healthz" {
            http_method(request).map_or_else(Admission::Refuse, |()| Admission::Health { site })
        } else {
            Admission::Refuse(Refused::NotFound)
        };
    };
    let Some(speaks) = &s.mounts[mount].protocols else {
        return http_method(request)
            .map_or_else(Admission::Refuse, |()| Admission::Http { site, mount });
    };
    let upgrade = match check_upgrade(request) {
        Ok(up) => up,
        Err(refused) => return Admission::Refuse(refused),
    };
    if !origin_allowed(&s.origins, request.origin()) {
        return Admission::Refuse(Refused::OriginNotAllowed);
    }
    let (protocol, echo) = negotiate(&upgrade.offered, speaks);
    if let Some((_, token)) = s.tokens.iter().find(|(p, _)| p == protocol)
        && let Err(reject) = check_bearer(request, token)
    {
        return Admission::Refuse(if reject.status() == 401 {
            Refused::TokenRequired
        } else {
            Refused::TokenInvalid
        });
    }
    Admission::Upgrade {
        site,
        mount,
        protocol: protocol.to_owned(),
        echo,
        upgrade,
    }
}

/// The site for a request: the one naming its `Host` exactly, else the
/// first whose `*.` wildcard matches it, else the first without names, else
/// the first.
pub(crate) fn route(table: &Table, request: &Request) -> Option<usize> {
    site_for_name(table, request.host().as_deref())
}

/// The site a name chose (a `Host`, or a TLS server name: the one whose
/// certificate the client saw), by [`route`]'s rule; without a name, the
/// default site.
pub(crate) fn site_for_name(table: &Table, name: Option<&str>) -> Option<usize> {
    pick_site(table.sites.iter().map(|s| s.hosts.as_slice()), name)
}

/// The mount serving `path`: an exact match, else the longest prefix mount.
pub(crate) fn find_mount(mounts: &[Route], path: &str) -> Option<usize> {
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path_matches(&m.path, m.prefix, path))
        .max_by_key(|(_, m)| (*m.path == *path, m.path.len()))
        .map(|(i, _)| i)
}

/// Whether `path` falls under a mount at `mount` (below it too, for a prefix
/// mount, at a segment boundary: `/static` serves `/static/a.css`, not
/// `/staticky`).
pub(crate) fn path_matches(mount: &str, prefix: bool, path: &str) -> bool {
    if mount == path {
        return true;
    }
    let base = mount.trim_end_matches('/');
    prefix && path.starts_with(base) && path.as_bytes().get(base.len()) == Some(&b'/')
}

/// Whether a handshake with this `Origin` header (or none) may proceed: any
/// origin while none is listed; without an `Origin` (not a browser) always.
pub(crate) fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        _ if allowed.is_empty() => true,
        None => true,
        Some(o) => {
            let o = o.trim().trim_end_matches('/');
            allowed.iter().any(|a| a.eq_ignore_ascii_case(o))
        }
    }
}

/// HTTP mounts answer GET and HEAD.
fn http_method(request: &Request) -> Result<(), Refused> {
    match request.method() {
        "GET" | "HEAD" => Ok(()),
        _ => Err(Refused::MethodNotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> std::net::SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn ws(path: &str, protocols: &[&str]) -> Route {
        Route {
            path: path.into(),
            prefix: false,
            protocols: Some(protocols.iter().map(|p| (*p).to_owned()).collect()),
        }
    }

    fn table() -> Table {
        let named = Site {
            hosts: vec!["a.example".into()],
            origins: vec!["https://app.example".into()],
            mounts: vec![
                ws("/echo", &["echo"]),
                Route {
                    path: "/api".into(),
                    prefix: true,
                    protocols: Some(vec!["chat".into(), "echo".into()]),
                },
                Route {
                    path: "/page".into(),
                    prefix: false,
                    protocols: None,
                },
            ],
            tokens: vec![("chat".into(), "s3cret".into())],
        };
        let default = Site {
            mounts: vec![ws("/echo", &["echo"])],
            ..Site::default()
        };
        Table {
            sites: vec![named, default],
        }
    }

    fn get(path: &str, headers: &[(&str, &str)]) -> Request {
        Request::synthetic("GET", path, headers, peer())
    }

    const UPGRADE: [(&str, &str); 4] = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    fn upgrade_to(host: &str, path: &str, extra: &[(&str, &str)]) -> Request {
        let mut h: Vec<(&str, &str)> = UPGRADE.to_vec();
        h.push(("Host", host));
        h.extend_from_slice(extra);
        get(path, &h)
    }

    #[test]
    fn routes_by_host_then_default_and_by_path() {
        let t = table();
        assert_eq!(route(&t, &get("/", &[("Host", "A.EXAMPLE:80")])), Some(0));
        assert_eq!(route(&t, &get("/", &[("Host", "other")])), Some(1));
        assert_eq!(route(&t, &get("/", &[])), Some(1));
        assert_eq!(route(&Table::default(), &get("/", &[])), None);
        let m = &t.sites[0].mounts;
        assert_eq!(find_mount(m, "/echo"), Some(0));
        assert_eq!(find_mount(m, "/echo/x"), None);
        assert_eq!(find_mount(m, "/api/x/y"), Some(1));
        assert_eq!(find_mount(m, "/apix"), None);
    }

    #[test]
    fn http_mounts_answer_get_and_head_only_and_healthz_is_built_in() {
        let t = table();
        let host = [("Host", "a.example")];
        assert_eq!(
            admit(&get("/page", &host), &t),
            Admission::Http { site: 0, mount: 2 }
        );
        let post = Request::synthetic("POST", "/page", &host, peer());
        assert_eq!(
            admit(&post, &t),
            Admission::Refuse(Refused::MethodNotAllowed)
        );
        assert_eq!(
            admit(&get("/healthz", &[]), &t),
            Admission::Health { site: 1 }
        );
        assert_eq!(
            admit(&get("/nope", &[]), &t),
            Admission::Refuse(Refused::NotFound)
        );
        // A WebSocket mount asked for plain HTTP.
        assert_eq!(
            admit(&get("/echo", &[("Host", "x")]), &t),
            Admission::Refuse(Refused::NotAnUpgrade)
        );
    }

    #[test]
    fn an_upgrade_passes_origin_subprotocol_and_token() {
        let t = table();
        match admit(&upgrade_to("a.example", "/echo", &[]), &t) {
            Admission::Upgrade {
                site: 0,
                mount: 0,
                protocol,
                echo: false,
                ..
            } => assert_eq!(protocol, "echo"),
            other => panic!("{other:?}"),
        }
        let evil = [("Origin", "https://evil.example")];
        assert_eq!(
            admit(&upgrade_to("a.example", "/echo", &evil), &t),
            Admission::Refuse(Refused::OriginNotAllowed)
        );
        let good = [("Origin", "https://APP.example/")];
        assert!(matches!(
            admit(&upgrade_to("a.example", "/echo", &good), &t),
            Admission::Upgrade { .. }
        ));
        // `chat` is the prefix mount's default, and wants a token.
        assert_eq!(
            admit(&upgrade_to("a.example", "/api/room", &[]), &t),
            Admission::Refuse(Refused::TokenRequired)
        );
        assert_eq!(
            admit(&upgrade_to("a.example", "/api/room?token=nope", &[]), &t),
            Admission::Refuse(Refused::TokenInvalid)
        );
        assert!(matches!(
            admit(&upgrade_to("a.example", "/api/room?token=s3cret", &[]), &t),
            Admission::Upgrade { protocol, .. } if protocol == "chat"
        ));
        // `echo`, offered, needs no token.
        let offer = [("Sec-WebSocket-Protocol", "echo")];
        assert!(matches!(
            admit(&upgrade_to("a.example", "/api/room", &offer), &t),
            Admission::Upgrade { protocol, echo: true, .. } if protocol == "echo"
        ));
    }

    #[test]
    fn over_tls_the_host_must_agree_with_the_server_name() {
        use crate::proto::tls::TlsInfo;
        let t = table();
        let over = |sni: Option<&str>, host: &str| {
            admit(
                &upgrade_to(host, "/echo", &[]).with_tls(TlsInfo::new(
                    sni.map(str::to_owned),
                    None,
                    Vec::new(),
                )),
                &t,
            )
        };
        assert!(matches!(
            over(Some("a.example"), "a.example:443"),
            Admission::Upgrade { site: 0, .. }
        ));
        assert!(matches!(
            over(Some("unknown.example"), "other.example"),
            Admission::Upgrade { site: 1, .. }
        ));
        assert!(matches!(
            over(None, "x"),
            Admission::Upgrade { site: 1, .. }
        ));
        assert_eq!(
            over(Some("a.example"), "other.example"),
            Admission::Refuse(Refused::Misdirected)
        );
        assert_eq!(
            over(None, "a.example"),
            Admission::Refuse(Refused::Misdirected)
        );
        assert_eq!(Refused::Misdirected.status(), 421);
    }

    #[test]
    fn wildcard_hosts_route_one_label() {
        let mut t = table();
        t.sites[0].hosts = vec!["*.a.example".into()];
        assert_eq!(route(&t, &get("/", &[("Host", "x.a.example")])), Some(0));
        assert_eq!(route(&t, &get("/", &[("Host", "a.example")])), Some(1));
    }

    #[test]
    fn origins_without_a_list_or_an_origin_pass() {
        assert!(origin_allowed(&[], Some("https://x")));
        assert!(origin_allowed(&["https://a".into()], None));
        assert!(!origin_allowed(&["https://a".into()], Some("https://b")));
        assert!(origin_allowed(&["https://a".into()], Some(" https://A/ ")));
    }
}
