//! What a TLS connection tells the layers above it, sans-IO: the facts of a
//! finished handshake ([`TlsInfo`]: the SNI name, the ALPN protocol, the
//! client's verified certificate chain), a minimal DER reader for the few
//! certificate fields a gateway needs (serial, subject common name,
//! validity), and the host-name patterns SNI and `Host` are matched against
//! (exact names and `*.` wildcards).
//!
//! The TLS handshake itself is rustls' (in the runtime, feature `tls`); this
//! module only reads what it produced, so that admission (which decides 421
//! Misdirected Request) and `Protocol::open` (which authorizes by subject)
//! stay pure.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The facts of a TLS handshake, as [`Request::tls`](crate::Request::tls)
/// shows them to protocols and handlers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
    peer_certificates: Arc<[Certificate]>,
}

impl TlsInfo {
    /// The facts of one handshake: the SNI name the client sent (lowercased),
    /// the ALPN protocol agreed on, and the client's certificate chain as
    /// verified (leaf first; empty without one).
    pub fn new(
        sni: Option<String>,
        alpn: Option<Vec<u8>>,
        peer_certificates: Vec<Certificate>,
    ) -> Self {
        Self {
            sni: sni.map(|s| s.to_ascii_lowercase()),
            alpn,
            peer_certificates: peer_certificates.into(),
        }
    }

    /// The server name the client asked for (SNI), lowercased; `None` when
    /// it sent none (a client connecting by IP address).
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The protocol agreed by ALPN (`http/1.1`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.alpn.as_deref()
    }

    /// The client's certificate chain, leaf first, as the vhost's
    /// `client_ca` verified it; empty when the client presented none.
    pub fn peer_certificates(&self) -> &[Certificate] {
        &self.peer_certificates
    }
}

/// An X.509 certificate in DER, with the fields a gateway reads from it.
///
/// The fields are read on demand by a small DER reader that never panics on
/// malformed input (a field it cannot find is `None`); the certificate was
/// verified by rustls before wsgate hands it on.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate(Arc<[u8]>);

impl Certificate {
    /// Wraps a DER-encoded certificate.
    pub fn from_der(der: impl Into<Vec<u8>>) -> Self {
        Self(der.into().into())
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.0
    }

    /// The serial number's bytes, big-endian, as encoded (a leading zero
    /// byte keeps a high bit from meaning "negative").
    pub fn serial(&self) -> Option<&[u8]> {
        tbs_fields(&self.0).map(|f| f.serial)
    }

    /// The subject's common name (the first `CN`), if it has one in a
    /// string type.
    pub fn subject_common_name(&self) -> Option<&str> {
        common_name(tbs_fields(&self.0)?.subject)
    }

    /// The validity period: not before, not after.
    pub fn validity(&self) -> Option<(SystemTime, SystemTime)> {
        let f = tbs_fields(&self.0)?;
        Some((f.not_before, f.not_after))
    }
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("subject_common_name", &self.subject_common_name())
            .field("der_len", &self.0.len())
            .finish()
    }
}

/// Whether host `name` (lowercase) matches `pattern`: equal, or `*.rest`
/// with `name` being one more label in front of `rest` (as certificates'
/// wildcards go: `*.a.example` matches `x.a.example`, neither `a.example`
/// nor `y.x.a.example`).
pub(crate) fn host_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        None => pattern == name,
        Some(rest) => name
            .strip_suffix(rest)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
    }
}

/// Which of `sites` (each a list of host patterns) serves `name`: the first
/// naming it exactly, else the first whose wildcard matches it, else the
/// first without names, else the first. `None` only without sites.
pub(crate) fn pick_site<'a, I>(sites: I, name: Option<&str>) -> Option<usize>
where
    I: Iterator<Item = &'a [String]> + Clone,
{
    if let Some(name) = name {
        let exact = |p: &String| !p.starts_with("*.") && p == name;
        if let Some(i) = sites.clone().position(|hosts| hosts.iter().any(exact)) {
            return Some(i);
        }
        if let Some(i) = sites
            .clone()
            .position(|hosts| hosts.iter().any(|p| host_matches(p, name)))
        {
            return Some(i);
        }
    }
    sites
        .clone()
        .position(<[String]>::is_empty)
        .or_else(|| sites.clone().next().map(|_| 0))
}

/// The fields of a certificate's `tbsCertificate` that we read.
struct TbsFields<'a> {
    serial: &'a [u8],
    subject: &'a [u8],
    not_before: SystemTime,
    not_after: SystemTime,
}

/// Reads `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber INTEGER, signature, issuer, validity, subject, ...
/// } ... }` (RFC 5280 §4.1).
fn tbs_fields(der: &[u8]) -> Option<TbsFields<'_>> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    let (serial, rest) = tlv(rest, 0x02)?;
    let (_signature, rest) = tlv(rest, 0x30)?;
    let (_issuer, rest) = tlv(rest, 0x30)?;
    let (validity, rest) = tlv(rest, 0x30)?;
    let (subject, _) = tlv(rest, 0x30)?;
    let (not_before, v) = time(validity)?;
    let (not_after, _) = time(v)?;
    Some(TbsFields {
        serial,
        subject,
        not_before,
        not_after,
    })
}

/// One DER element of tag `tag`: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A `UTCTime` or `GeneralizedTime` (`YYMMDDHHMMSSZ` / `YYYYMMDDHHMMSSZ`).
fn time(input: &[u8]) -> Option<(SystemTime, &[u8])> {
    let (digits, rest, year) = match input.first()? {
        0x17 => {
            let (v, rest) = tlv(input, 0x17)?;
            let yy = number(v.get(..2)?)?;
            // RFC 5280 §4.1.2.5.1: 50..99 are 19xx, 00..49 are 20xx.
            let year = if yy >= 50 { 1900 + yy } else { 2000 + yy };
            (v.get(2..)?, rest, year)
        }
        0x18 => {
            let (v, rest) = tlv(input, 0x18)?;
            (v.get(4..)?, rest, number(v.get(..4)?)?)
        }
        _ => return None,
    };
    if digits.len() != 11 || digits[10] != b'Z' {
        return None;
    }
    let field = |i: usize| number(&digits[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(60);
    Some((SystemTime::UNIX_EPOCH + Duration::from_secs(secs), rest))
}

fn number(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

/// Days from 1970-01-01 to a date on or after it (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    if year < 1970 {
        return None;
    }
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// The first common name (OID 2.5.4.3) of a `Name`'s contents.
fn common_name(mut name: &[u8]) -> Option<&str> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (set, rest) = tlv(name, 0x31)?;
        name = rest;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (attr, more) = tlv(attrs, 0x30)?;
            attrs = more;
            let (oid, value) = tlv(attr, 0x06)?;
            if oid == CN {
                let tag = *value.first()?;
                // UTF8String, PrintableString, IA5String, TeletexString.
                if ![0x0c, 0x13, 0x16, 0x14].contains(&tag) {
                    return None;
                }
                let (text, _) = tlv(value, tag)?;
                return std::str::from_utf8(text).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label() {
        assert!(host_matches("a.example", "a.example"));
        assert!(!host_matches("a.example", "b.example"));
        assert!(host_matches("*.a.example", "x.a.example"));
        assert!(!host_matches("*.a.example", "a.example"));
        assert!(!host_matches("*.a.example", "y.x.a.example"));
        assert!(!host_matches("*.a.example", ".a.example"));
        assert!(!host_matches("*.a.example", "xa.example"));
    }

    #[test]
    fn sites_are_picked_exact_then_wildcard_then_default() {
        let sites: Vec<Vec<String>> = vec![
            vec!["*.a.test".into()],
            vec!["x.a.test".into()],
            vec![],
            vec!["b.test".into()],
        ];
        let it = || sites.iter().map(Vec::as_slice);
        assert_eq!(pick_site(it(), Some("x.a.test")), Some(1));
        assert_eq!(pick_site(it(), Some("y.a.test")), Some(0));
        assert_eq!(pick_site(it(), Some("b.test")), Some(3));
        assert_eq!(pick_site(it(), Some("c.test")), Some(2));
        assert_eq!(pick_site(it(), None), Some(2));
        let named: Vec<Vec<String>> = vec![vec!["a".into()], vec!["b".into()]];
        assert_eq!(
            pick_site(named.iter().map(Vec::as_slice), Some("z")),
            Some(0)
        );
        let none: Vec<Vec<String>> = Vec::new();
        assert_eq!(pick_site(none.iter().map(Vec::as_slice), Some("z")), None);
    }

    #[test]
    fn dates_count_days_since_the_epoch() {
        assert_eq!(days_from_civil(1970, 1, 1), Some(0));
        assert_eq!(days_from_civil(2000, 3, 1), Some(11_017));
        assert_eq!(days_from_civil(1969, 12, 31), None);
    }

    #[test]
    fn garbage_reads_as_nothing() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01",
        ] {
            let c = Certificate::from_der(bytes.to_vec());
            assert_eq!(c.serial(), None);
            assert_eq!(c.subject_common_name(), None);
            assert_eq!(c.validity(), None);
        }
    }
}
