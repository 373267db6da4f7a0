//! A backend's base URL, parsed once into what each request needs.

/// Where a server's API lives: `http://host:port/base`, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `https`: the connection is wrapped in TLS.
    pub(super) tls: bool,
    /// `host:port` as written (the `Host` header).
    pub(super) authority: String,
    /// The name or address to connect to (an IPv6 address without its brackets).
    pub(super) host: String,
    pub(super) port: u16,
    /// The path before each request's own (`/v1`), without a trailing slash.
    pub(super) base: String,
}

impl Origin {
    /// Parses a base URL such as `http://10.0.0.5:8000/v1`, refusing what this client
    /// cannot honour (another scheme, https without the `tls` feature, credentials, a
    /// query) with the reason.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let scheme = |s: &str| {
            url.get(..s.len())
                .filter(|p| p.eq_ignore_ascii_case(s))
                .map(|_| &url[s.len()..])
        };
        let (tls, rest) = match (scheme("http://"), scheme("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) if cfg!(feature = "tls") => (true, rest),
            (_, Some(_)) => {
                return Err(format!(
                    "`{url}` is https, and this build has no TLS: build tokenfab with `--features tls`, or reach the upstream over plain http://"
                ));
            }
            _ => return Err(format!("`{url}` is not an http:// or https:// URL")),
        };
        if rest.contains(['?', '#']) {
            return Err(format!(
                "`{url}` has a query or fragment; give the API's base URL"
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.contains('@') {
            return Err(format!(
                "`{url}` holds credentials; give the key as the backend's `api_key`"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("`{url}` has an invalid port `{p}`"))?;
                (h, port)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let valid = |c: char| c.is_ascii_alphanumeric() || ".-_:".contains(c);
        if host.is_empty() || !host.chars().all(valid) {
            return Err(format!("`{url}` has no valid host"));
        }
        if path.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "`{url}` has spaces or other characters a path cannot hold"
            ));
        }
        Ok(Origin {
            tls,
            authority: authority.to_owned(),
            host: host.to_owned(),
            port,
            base: path.trim_end_matches('/').to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let o = Origin::parse("http://10.0.0.5:8000/v1/").unwrap();
        assert_eq!(
            (
                o.authority.as_str(),
                o.host.as_str(),
                o.port,
                o.base.as_str()
            ),
            ("10.0.0.5:8000", "10.0.0.5", 8000, "/v1")
        );
        let o = Origin::parse("HTTP://[::1]:9/").unwrap();
        assert_eq!((o.host.as_str(), o.port, o.base.as_str()), ("::1", 9, ""));
        let o = Origin::parse("http://vllm.internal").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("vllm.internal", 80));
        for (bad, why) in [
            ("ftp://h/v1", "http://"),
            ("h:80/v1", "http://"),
            ("http://h:x/v1", "port"),
            ("http://u:p@h/v1", "api_key"),
            ("http:///v1", "host"),
            ("http://h/v1?x=1", "query"),
            ("http://h/a b", "path"),
        ] {
            let e = Origin::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn https_needs_the_tls_feature() {
        let e = Origin::parse("https://api.example.com/v1").unwrap_err();
        assert!(e.contains("--features tls"), "{e}");
    }
}
