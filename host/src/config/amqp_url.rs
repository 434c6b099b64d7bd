//! AMQP URLs, read to check them, to put a password from the environment into
//! them, and to print them without it:
//! `amqp[s]://[user[:password]@]host[:port][/vhost][?options]`. The URL is read
//! by the `url` crate, the parser amq-protocol-uri (lapin's) reads it with, so
//! both agree on where the user, password, host and vhost are. Then it is read
//! again the way lapin reads it when it connects ([`read_as_lapin`]), so a URL
//! that would fail there fails at config load, with the option named.

use std::str::FromStr;

use amq_protocol_uri::{AMQPUri, SASLMechanism};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

/// What a password is encoded with: everything but RFC 3986's unreserved
/// characters. `Url::set_password` alone leaves `%` as it is, which lapin
/// would then decode (`a%41` would become `aA`).
const PASSWORD: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A URL that [`parse`] accepted: an `amqp` or `amqps` URL with a host.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AmqpUrl(Url);

/// How a URL should look, for messages.
const EXPECTED: &str = "expected amqp://user@host:port/vhost (or amqps://)";

/// Reads and checks `url`. The error says what is wrong and never repeats the
/// URL (it may hold a password).
pub(super) fn parse(url: &str) -> Result<AmqpUrl, String> {
    // `url`'s messages name the flaw, never the URL.
    let parsed = Url::parse(url).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => format!("not a URL: {EXPECTED}"),
        url::ParseError::EmptyHost => format!("the URL names no host; {EXPECTED}"),
        url::ParseError::InvalidPort => "the port is not a number from 1 to 65535".to_string(),
        e => format!("{e}; {EXPECTED}"),
    })?;
    // `user:password@host` without `scheme://` reads as a URL of the scheme
    // `user`, with no host.
    if parsed.cannot_be_a_base() {
        return Err(format!("not a URL: {EXPECTED}"));
    }
    let scheme = parsed.scheme();
    if scheme != "amqp" && scheme != "amqps" {
        return Err(format!(
            "the scheme is `{scheme}`; expected `amqp` or `amqps`"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL names no host; {EXPECTED}"));
    }
    if parsed.port() == Some(0) {
        return Err("the port is not a number from 1 to 65535".to_string());
    }
    if parsed.fragment().is_some() {
        return Err("an AMQP URL has no `#fragment`".to_string());
    }
    Ok(AmqpUrl(parsed))
}

impl AmqpUrl {
    /// The URL with `password` (plain text, percent-encoded here) as its password.
    pub fn with_password(&self, password: &str) -> Result<String, String> {
        if self.0.username().is_empty() {
            return Err(
                "the URL names no user for the password; write it as amqp://USER@host/vhost"
                    .to_string(),
            );
        }
        let mut url = self.0.clone();
        let encoded = utf8_percent_encode(password, PASSWORD).to_string();
        url.set_password(Some(&encoded))
            .map_err(|()| "the URL cannot hold a password".to_string())?;
        Ok(url.into())
    }

    /// The URL with its password, if any, replaced by `***`.
    fn redacted(&self) -> String {
        let mut url = self.0.clone();
        if url.password().is_some() {
            // Cannot fail: the URL has a host, so it can hold a password.
            let _ = url.set_password(Some("***"));
        }
        url.into()
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
        Ok(url) => url.redacted(),
        Err(_) => "(an invalid AMQP URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_usual_forms_as_lapin_does() {
        for text in [
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            "amqps://rabbit.example",
            "amqp://u@rabbit.example:5672/v?heartbeat=10",
        ] {
            let url = parse(text).unwrap().0;
            let lapin = AMQPUri::from_str(text).unwrap();
            assert_eq!(url.host_str(), Some(&*lapin.authority.host), "{text}");
            assert_eq!(
                url.port().unwrap_or(lapin.scheme.default_port()),
                lapin.authority.port,
                "{text}"
            );
        }
        let url = parse("amqp://u@[::1]:5672/v?heartbeat=10").unwrap().0;
        assert_eq!(url.host_str(), Some("[::1]"));
        assert_eq!(url.port(), Some(5672));
    }

    #[test]
    fn refuses_bad_urls_without_repeating_them() {
        for (url, expected) in [
            ("http://guest:s3cret@host/", "scheme"),
            ("guest:s3cret@host", "not a URL"),
            ("amqp://guest:s3cret@/vhost", "no host"),
            ("amqp://guest:s3cret@host:99999/", "port"),
            ("amqp://guest:s3cret@host:x/", "port"),
            ("amqp://guest:s3cret@host:0/", "port"),
            ("amqp://guest:s3cret@host/v#top", "fragment"),
        ] {
            let error = parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("s3cret"), "{url}: {error}");
        }
    }

    #[test]
    fn puts_a_percent_encoded_password_in() {
        let url = parse("amqp://sluice:old@mq:5672/%2f").unwrap();
        let password = "p@ss:w/rd é!$&'()*+,;=%";
        let with = url.with_password(password).unwrap();
        assert_eq!(
            with,
            "amqp://sluice:p%40ss%3Aw%2Frd%20%C3%A9%21%24%26%27%28%29%2A%2B%2C%3B%3D%25@mq:5672/%2f"
        );
        // lapin reads back the password as it was given.
        let lapin = AMQPUri::from_str(&with).unwrap();
        assert_eq!(lapin.authority.userinfo.password, password);
        assert_eq!(lapin.authority.userinfo.username, "sluice");
        assert_eq!(lapin.vhost, "/");
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
