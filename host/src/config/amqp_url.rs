//! AMQP URLs, read just enough to check them, to put a password from the
//! environment into them, and to print them without it:
//! `amqp[s]://[user[:password]@]host[:port][/vhost][?options]`.

/// The parts of an AMQP URL that matter here, as slices of it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AmqpUrl<'a> {
    /// `amqp` or `amqps`.
    pub scheme: &'a str,
    /// The user, still percent-encoded; `None` without `@`.
    pub user: Option<&'a str>,
    /// The password, still percent-encoded.
    pub password: Option<&'a str>,
    /// `host[:port]`.
    pub host_port: &'a str,
    /// Everything after the authority: `/vhost?options`, maybe empty.
    pub rest: &'a str,
}

/// Splits and checks `url`. The error says what is wrong and never repeats the
/// URL (it may hold a password).
pub(super) fn parse(url: &str) -> Result<AmqpUrl<'_>, String> {
    let Some((scheme, after)) = url.split_once("://") else {
        return Err("not a URL: expected amqp://user@host:port/vhost (or amqps://)".to_string());
    };
    if scheme != "amqp" && scheme != "amqps" {
        return Err(format!(
            "the scheme is `{scheme}`; expected `amqp` or `amqps`"
        ));
    }
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (userinfo, host_port) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (Some(user), Some(password)),
            None => (Some(info), None),
        },
    };
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err("the IPv6 host has no closing `]`".to_string());
        };
        match after {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("expected `:port` after the IPv6 host".to_string()),
            },
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("the URL names no host; expected amqp://user@host:port/vhost".to_string());
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!("the port `{port}` is not a number from 1 to 65535"));
            }
        }
    }
    if rest.starts_with('#') {
        return Err("an AMQP URL has no `#fragment`".to_string());
    }
    Ok(AmqpUrl {
        scheme,
        user,
        password,
        host_port,
        rest,
    })
}

impl AmqpUrl<'_> {
    /// The URL with `password` (plain text, percent-encoded here) as its password.
    pub fn with_password(&self, password: &str) -> Result<String, String> {
        let user = match self.user {
            Some(user) if !user.is_empty() => user,
            _ => {
                return Err(
                    "the URL names no user for the password; write it as amqp://USER@host/vhost"
                        .to_string(),
                );
            }
        };
        Ok(format!(
            "{}://{}:{}@{}{}",
            self.scheme,
            user,
            percent_encode(password),
            self.host_port,
            self.rest
        ))
    }
}

/// `url` with its password replaced by `***`; a URL that does not parse is
/// replaced whole, since where its password is cannot be told.
pub(super) fn redact(url: &str) -> String {
    match parse(url) {
        Ok(AmqpUrl {
            scheme,
            user,
            password,
            host_port,
            rest,
        }) => {
            let userinfo = match (user, password) {
                (Some(user), Some(_)) => format!("{user}:***@"),
                (Some(user), None) => format!("{user}@"),
                (None, _) => String::new(),
            };
            format!("{scheme}://{userinfo}{host_port}{rest}")
        }
        Err(_) => "(an invalid AMQP URL)".to_string(),
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let url = parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(url.scheme, "amqp");
        assert_eq!(url.user, Some("guest"));
        assert_eq!(url.password, Some("guest"));
        assert_eq!(url.host_port, "127.0.0.1:5672");
        assert_eq!(url.rest, "/%2f");
        let url = parse("amqps://rabbit.example").unwrap();
        assert_eq!((url.user, url.rest), (None, ""));
        let url = parse("amqp://u@[::1]:5672/v?heartbeat=10").unwrap();
        assert_eq!(url.host_port, "[::1]:5672");
        assert_eq!(url.rest, "/v?heartbeat=10");
    }

    #[test]
    fn refuses_bad_urls_without_repeating_them() {
        for (url, expected) in [
            ("http://guest:s3cret@host/", "scheme"),
            ("guest:s3cret@host", "not a URL"),
            ("amqp://guest:s3cret@/vhost", "no host"),
            ("amqp://guest:s3cret@host:99999/", "port"),
            ("amqp://guest:s3cret@host:x/", "port"),
        ] {
            let error = parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("s3cret"), "{url}: {error}");
        }
    }

    #[test]
    fn puts_a_percent_encoded_password_in() {
        let url = parse("amqp://sluice:old@mq:5672/%2f").unwrap();
        assert_eq!(
            url.with_password("p@ss:w/rd é").unwrap(),
            "amqp://sluice:p%40ss%3Aw%2Frd%20%C3%A9@mq:5672/%2f"
        );
        let url = parse("amqp://mq/%2f").unwrap();
        assert!(url.with_password("x").unwrap_err().contains("no user"));
    }

    #[test]
    fn redacts_the_password() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://mq/x"), "amqp://mq/x");
        assert_eq!(redact("nonsense:s3cret"), "(an invalid AMQP URL)");
    }
}
