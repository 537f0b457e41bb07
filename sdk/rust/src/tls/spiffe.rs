//! SPIFFE IDs, and the one an X.509-SVID names: the rules of the agent's
//! `meridian.security.model` (trust domains, names, the agent's path).
//!
//! The ID grammar is pure string rules; [`svid_id`] reads a certificate's URI
//! SANs with `x509-parser`.

use std::fmt;

const SCHEME: &str = "spiffe://";
/// SPIFFE caps an ID at 2048 bytes.
const MAX_ID_BYTES: usize = 2048;

/// A SPIFFE ID: `spiffe://<trust-domain><path>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpiffeId {
    trust_domain: String,
    /// Starts with `/`; segments are non-empty.
    path: String,
}

impl SpiffeId {
    /// The ID `uri` spells, or why it is not one (the SPIFFE rules: a
    /// lowercase trust domain; a path of non-empty segments of letters,
    /// digits, `.`, `-` and `_`, none `.` or `..`; no port, user info, query,
    /// fragment or percent-encoding).
    pub(crate) fn parse(uri: &str) -> Result<Self, String> {
        if uri.len() > MAX_ID_BYTES {
            return Err(format!("is longer than {MAX_ID_BYTES} bytes"));
        }
        let Some(rest) = uri.strip_prefix(SCHEME) else {
            return Err("does not start with spiffe://".into());
        };
        let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !is_trust_domain(trust_domain) {
            return Err(format!(
                "has trust domain {trust_domain:?}; a trust domain is 1-255 characters of \
                 a-z, 0-9, '.', '-' and '_', starting and ending with a letter or digit"
            ));
        }
        if path.is_empty() {
            return Err("has no path".into());
        }
        let segments_ok = path[1..].split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        });
        if !segments_ok {
            return Err(format!(
                "has path {path:?}; path segments are non-empty runs of letters, digits, \
                 '.', '-' and '_' (not '.' or '..')"
            ));
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            path: path.to_owned(),
        })
    }

    pub(crate) fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The region of an agent's ID (`/region/<region>/agent`, the region a
    /// Meridian name), or `None` for any other ID.
    pub(crate) fn agent_region(&self) -> Option<&str> {
        let mut segments = self.path[1..].split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("region"), Some(region), Some("agent"), None) if is_name(region) => Some(region),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}{}", self.trust_domain, self.path)
    }
}

/// `^[a-z0-9]([a-z0-9._-]{0,253}[a-z0-9])?$`
fn is_trust_domain(s: &str) -> bool {
    let edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= 255
                && edge(first)
                && edge(last)
                && bytes
                    .iter()
                    .all(|&b| edge(b) || matches!(b, b'.' | b'-' | b'_'))
        }
        _ => false,
    }
}

/// A region, service or operator name: `^[a-z][a-z0-9-]{0,62}$`.
fn is_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The SPIFFE ID the DER certificate `der` names: its one `spiffe://` URI
/// SAN (other URI SANs are not identities and are ignored, as the agent
/// does). The error says what is wrong, as a phrase to follow the
/// certificate's name: "names no spiffe:// ID ...".
pub(crate) fn svid_id(der: &[u8]) -> Result<SpiffeId, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("is not an X.509 certificate: {e}"))?;
    let sans = cert.subject_alternative_name().map_err(|e| {
        format!("has a subject alternative name extension that does not parse: {e}")
    })?;
    let ids: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(SCHEME) => Some(*uri),
            _ => None,
        })
        .collect();
    match ids.as_slice() {
        [] => Err("names no spiffe:// ID in its URI SANs (an X.509-SVID names exactly one)".into()),
        [uri] => SpiffeId::parse(uri).map_err(|why| format!("names {uri:?}, which {why}")),
        many => Err(format!(
            "names {} spiffe:// IDs in its URI SANs ({}); an X.509-SVID names exactly one",
            many.len(),
            many.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identities_the_ca_issues_parse() {
        for (uri, region) in [
            ("spiffe://td/region/us-east/agent", Some("us-east")),
            (
                "spiffe://prod.example.com/region/eu-west-1/agent",
                Some("eu-west-1"),
            ),
            ("spiffe://td/service/orders", None),
            ("spiffe://td/gateway", None),
            ("spiffe://td/operator/alice", None),
            ("spiffe://td/region/us-east/agent/extra", None),
            ("spiffe://td/region/US-East/agent", None),
            ("spiffe://td/region/9east/agent", None),
        ] {
            let id = SpiffeId::parse(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
            assert_eq!(id.to_string(), uri);
            assert_eq!(id.agent_region(), region, "{uri}");
        }
        let id = SpiffeId::parse("spiffe://prod.example.com/gateway").unwrap();
        assert_eq!(id.trust_domain(), "prod.example.com");
    }

    #[test]
    fn anything_else_is_refused_with_the_rule() {
        for (uri, says) in [
            (
                "https://td/region/us-east/agent",
                "does not start with spiffe://",
            ),
            ("spiffe://td", "has no path"),
            ("spiffe://td/", "path segments are non-empty"),
            ("spiffe://td/a//b", "path segments are non-empty"),
            ("spiffe://td/a/../b", "path segments are non-empty"),
            ("spiffe://td/a?b", "path segments are non-empty"),
            ("spiffe://td/a%20b", "path segments are non-empty"),
            ("spiffe://TD/gateway", "has trust domain \"TD\""),
            ("spiffe://td:8443/gateway", "has trust domain \"td:8443\""),
            ("spiffe://user@td/gateway", "has trust domain"),
            ("spiffe://-td/gateway", "has trust domain"),
            ("spiffe:///gateway", "has trust domain \"\""),
        ] {
            let err = SpiffeId::parse(uri).expect_err(uri);
            assert!(err.contains(says), "{uri}: {err:?} lacks {says:?}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_ID_BYTES));
        assert!(SpiffeId::parse(&long).unwrap_err().contains("longer than"));
    }

    #[test]
    fn names_follow_the_agents_rule() {
        assert!(is_name("a"));
        assert!(is_name(&format!("a{}", "b".repeat(62))));
        assert!(!is_name(&format!("a{}", "b".repeat(63))));
        assert!(!is_name(""));
        assert!(!is_name("-a"));
        assert!(!is_name("a_b"));
        assert!(is_trust_domain(&"a".repeat(255)));
        assert!(!is_trust_domain(&"a".repeat(256)));
        assert!(!is_trust_domain("td."));
    }
}
