//! AMQP URLs, read just enough to check them, to put a password from the
//! environment into them, and to print them without it:
//! `amqp[s]://[user[:password]@]host[:port][/vhost][?options]`. Then read
//! again the way lapin reads them when it connects ([`read_as_lapin`]), so a
//! URL that would fail there fails at config load, with the option named.

use std::str::FromStr;

use amq_protocol_uri::{AMQPUri, SASLMechanism};

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

/// Reads `url` with the parser lapin connects with (amq-protocol-uri's
/// `AMQPUri`): every problem, each naming its option (`option heartbeat:
/// invalid digit found in string ...`), where lapin's own message names none.
/// Options lapin does not know are ignored, as lapin ignores them. No message
/// repeats the URL (it may hold a password).
pub(super) fn read_as_lapin(url: &str) -> Result<(), Vec<String>> {
    let parsed = match url::Url::parse(url) {
        Ok(parsed) => parsed,
        Err(e) => return Err(vec![format!("invalid AMQP URL: {e}")]),
    };
    let mut problems = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in parsed.query_pairs() {
        // lapin reads the first of repeated options.
        if seen.iter().any(|k| *k == key) {
            continue;
        }
        seen.push(key.to_string());
        let why = match &*key {
            "frame_max" => integer::<u32>(&value, u32::MAX.into()),
            "channel_max" | "heartbeat" => integer::<u16>(&value, u16::MAX.into()),
            "connection_timeout" => integer::<u64>(&value, u64::MAX),
            "auth_mechanism" => value.parse::<SASLMechanism>().err().map(|_| {
                format!(
                    "{value:?} is not a SASL mechanism; expected PLAIN, AMQPLAIN, EXTERNAL, ANONYMOUS or RABBIT-CR-DEMO"
                )
            }),
            _ => None,
        };
        if let Some(why) = why {
            problems.push(format!("option {key}: {why}"));
        }
    }
    if problems.is_empty()
        && let Err(e) = AMQPUri::from_str(url)
    {
        // Its "Invalid URL: '<url>'" would show the password.
        let why = if e.contains(url) {
            "it cannot be read as an AMQP URL".to_string()
        } else {
            e
        };
        problems.push(format!("invalid AMQP URL: {why}"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Why `value` is not an integer of type `T` (parsed as lapin parses it, up to
/// `max`), if it is not.
fn integer<T: FromStr<Err = std::num::ParseIntError>>(value: &str, max: u64) -> Option<String> {
    value
        .parse::<T>()
        .err()
        .map(|e| format!("{e} ({value:?}; expected an integer from 0 to {max})"))
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
    fn options_are_read_as_lapin_reads_them_and_named() {
        assert_eq!(
            read_as_lapin("amqp://guest:s3cret@127.0.0.1:5672/%2f?heartbeat=10&frame_max=131072"),
            Ok(())
        );
        // lapin's own message, for the same URL, names no option.
        let lapin = AMQPUri::from_str("amqp://guest:s3cret@h/%2f?heartbeat=abc").unwrap_err();
        assert_eq!(lapin, "invalid digit found in string");
        let problems = read_as_lapin(
            "amqp://guest:s3cret@h/%2f?heartbeat=abc&channel_max=70000&auth_mechanism=md5",
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("option heartbeat: invalid digit found in string"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("option channel_max: number too large"),
            "{problems:?}"
        );
        assert!(
            problems[2].contains("option auth_mechanism: \"md5\""),
            "{problems:?}"
        );
        for problem in &problems {
            assert!(!problem.contains("s3cret"), "{problem}");
        }
        // Unknown options are ignored, as lapin ignores them; the first of a
        // repeated option is the one read.
        assert_eq!(
            read_as_lapin("amqp://h/%2f?colour=red&heartbeat=5&heartbeat=x"),
            Ok(())
        );
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
