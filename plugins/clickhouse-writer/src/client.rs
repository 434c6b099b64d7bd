//! ClickHouse's HTTP interface: statements and inserts as `POST` bodies, and what
//! each failure means.

use std::time::Duration;

use sluice_plugin_sdk::PluginError;
use sluice_plugin_sdk::http::{self, Request};

use crate::config::Config;

/// What went wrong, and whose move it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server or the network is unavailable or overloaded: retry later.
    Retriable(String),
    /// ClickHouse refused the data (a value it cannot parse or store, a check that
    /// failed). It refuses a whole insert, so the rows are split to find the bad one.
    Data(String),
    /// The configuration is wrong (the URL not granted, a wrong password).
    Config(String),
    /// Anything else.
    Fatal(String),
}

impl From<Failure> for PluginError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Retriable(m) => PluginError::Retriable(m),
            Failure::Config(m) => PluginError::InvalidConfig(m),
            Failure::Data(m) | Failure::Fatal(m) => PluginError::Fatal(m),
        }
    }
}

/// ClickHouse exception codes for data it refuses: parse errors, values out of
/// range, `throwIf` (a check written as a column default) and constraints.
const DATA_CODES: &[u32] = &[
    6, 25, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321, 349, 376, 395, 407, 469, 691,
];
/// Codes for an overloaded or unavailable server, or a lost connection.
const RETRIABLE_CODES: &[u32] = &[
    159, 202, 203, 209, 210, 225, 236, 241, 242, 252, 279, 319, 394, 425, 439, 473, 999,
];
/// Codes for a configuration mistake: unknown user, wrong password, no access,
/// read-only user.
const CONFIG_CODES: &[u32] = &[164, 192, 193, 194, 497, 516];

/// A client of one ClickHouse server.
pub struct Client {
    url: String,
    authorization: Option<String>,
    timeout: Duration,
}

impl Client {
    /// A client for the configured server (nothing is sent yet).
    pub fn new(config: &Config) -> Client {
        let authorization = config.user.as_ref().map(|user| {
            let credentials = format!("{user}:{}", config.password.as_deref().unwrap_or(""));
            format!("Basic {}", base64(credentials.as_bytes()))
        });
        Client {
            url: format!("{}/", config.url),
            authorization,
            timeout: config.timeout,
        }
    }

    /// Runs a statement (`body`, with data after it for an insert); returns the
    /// answer's body.
    pub fn post(&self, settings: &str, body: Vec<u8>) -> Result<Vec<u8>, Failure> {
        let url = if settings.is_empty() {
            self.url.clone()
        } else {
            format!("{}?{settings}", self.url)
        };
        let mut request = Request::post(url)
            .header("Content-Type", "application/octet-stream")
            .timeout(self.timeout)
            .body(body);
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth.as_str());
        }
        let response = request.send().map_err(|e| match e {
            http::Error::Connection { .. } | http::Error::Timeout { .. } => {
                Failure::Retriable(e.to_string())
            }
            http::Error::Denied { .. } => {
                Failure::Config(format!("{e} (add the writer's `url` to its grants.http)"))
            }
            _ => Failure::Fatal(e.to_string()),
        })?;
        if response.is_success() {
            return Ok(response.body);
        }
        Err(classify(response.status, &response.text()))
    }

    /// Runs a query and returns its answer as text (`FORMAT TabSeparated` rows).
    pub fn query(&self, sql: &str) -> Result<String, Failure> {
        let body = self.post("", sql.as_bytes().to_vec())?;
        String::from_utf8(body)
            .map_err(|_| Failure::Fatal(format!("{sql}: the answer is not UTF-8")))
    }
}

/// The failure for an error answer: by ClickHouse's exception code when it sent
/// one, else by the HTTP status (5xx retriable).
pub fn classify(status: u16, body: &str) -> Failure {
    let message = clickhouse_message(status, body);
    match exception_code(body) {
        Some(code) if DATA_CODES.contains(&code) => Failure::Data(message),
        Some(code) if RETRIABLE_CODES.contains(&code) => Failure::Retriable(message),
        Some(code) if CONFIG_CODES.contains(&code) => Failure::Config(message),
        _ if status == 401 || status == 403 => Failure::Config(message),
        _ if status >= 500 => Failure::Retriable(message),
        _ => Failure::Fatal(message),
    }
}

/// `Code: 27, e.displayText() = DB::Exception: ...` (older) or
/// `Code: 27. DB::Exception: ...` (newer): the code.
fn exception_code(body: &str) -> Option<u32> {
    let rest = &body[body.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// ClickHouse's error text, on one line, cut to a readable length.
fn clickhouse_message(status: u16, body: &str) -> String {
    let mut text: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(", e.what() = DB::Exception", "");
    if text.len() > 1000 {
        let mut cut = 1000;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    format!("ClickHouse answered {status}: {text}")
}

/// Standard base64 with padding (for the basic authentication header).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_by_code_then_status() {
        let data = "Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception\n";
        assert_eq!(
            classify(500, data),
            Failure::Data(
                "ClickHouse answered 500: Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero"
                    .into()
            )
        );
        assert!(matches!(
            classify(500, "Code: 27. DB::Exception: Cannot parse input"),
            Failure::Data(_)
        ));
        assert!(matches!(
            classify(500, "Code: 252, Too many parts"),
            Failure::Retriable(_)
        ));
        assert!(matches!(
            classify(401, "Code: 193, Wrong password"),
            Failure::Config(_)
        ));
        assert!(matches!(
            classify(404, "Code: 81, no db"),
            Failure::Fatal(_)
        ));
        assert!(matches!(classify(503, "busy"), Failure::Retriable(_)));
        assert!(matches!(
            classify(400, "Code: 62, Syntax error"),
            Failure::Fatal(_)
        ));
    }

    #[test]
    fn base64_of_credentials() {
        assert_eq!(base64(b"default:"), "ZGVmYXVsdDo=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b""), "");
    }
}
