//! From the file as written ([`super::raw`]) to a [`Config`]: defaults applied,
//! ranges and references checked, secrets read from the environment. Every
//! problem is collected with its key path; a check that depends on a value that
//! was itself wrong is skipped, so one mistake is reported once.

mod pipeline;

#[cfg(test)]
pub(super) use pipeline::parse_byte_size;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::amqp_url;
use super::raw::{Lenient, RawAmqpTls, RawConfig, RawConnection, RawDaemon, describe, key_path};
use super::{Config, DaemonConfig, Problem, StreamEndpoint};
use crate::capabilities::postgres::{GrantError, PostgresGrant};
use crate::queue_input::AmqpTls;
use crate::signing::TrustedKey;

/// The admin address when the file does not set one.
const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9464";
/// The connection types, as a message lists them.
const CONNECTION_TYPES: &str = "\"amqp\", \"postgres\" or \"rabbitmq-stream\"";

/// AMQP short strings (queue, exchange and routing key names) hold 255 bytes.
const AMQP_NAME_MAX: usize = 255;

pub(super) fn validate(
    raw: RawConfig,
    unknown_keys: Vec<Problem>,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Problem>> {
    let base = config_folder(file);
    let mut v = Validator {
        problems: unknown_keys,
        env,
        base: base.clone(),
        pin_keys: PinKeys::NotVerified,
    };
    let raw_daemon = raw.daemon.unwrap_or_default();
    let keys_given = raw_daemon.trusted_keys.is_some();
    let daemon = v.daemon(raw_daemon, &base);
    v.pin_keys = match (&daemon.trusted_keys, keys_given) {
        (Some(keys), _) => PinKeys::Keys(keys.clone()),
        (None, true) => PinKeys::Invalid,
        (None, false) => PinKeys::NotVerified,
    };
    let connections = v.connections(raw.connections.unwrap_or_default());
    let pipelines = v.pipelines(raw.pipelines.unwrap_or_default(), &connections);
    if v.problems.is_empty() {
        Ok(Config {
            file: file.to_path_buf(),
            daemon,
            pipelines,
        })
    } else {
        // Unknown keys were found first, while parsing; put each problem with its
        // section and pipeline so that the list reads in file order.
        v.problems.sort_by_key(|p| section_order(&p.path));
        Err(v.problems)
    }
}

/// The folder relative paths in the file are resolved against, made absolute so
/// that a later change of working directory does not move them.
fn config_folder(file: &Path) -> PathBuf {
    let folder = file.parent().unwrap_or(Path::new(""));
    let folder = if folder.as_os_str().is_empty() {
        Path::new(".")
    } else {
        folder
    };
    std::path::absolute(folder).unwrap_or_else(|_| folder.to_path_buf())
}

fn section_order(path: &str) -> (u8, usize) {
    if path.starts_with("line ") || path.is_empty() {
        (0, 0)
    } else if path.starts_with("daemon") {
        (1, 0)
    } else if path.starts_with("connections") {
        (2, 0)
    } else if let Some(rest) = path.strip_prefix("pipelines[") {
        let index = rest.split(']').next().and_then(|n| n.parse().ok());
        (3, index.unwrap_or(0))
    } else {
        (4, 0)
    }
}

/// A connection as validated: its type, and its settings when they were valid.
enum Connection {
    Amqp(Option<AmqpConnection>),
    Postgres(Option<Box<PostgresGrant>>),
    /// One endpoint per node.
    Stream(Option<Vec<StreamEndpoint>>),
    /// Its type was missing or wrong (already reported).
    Unknown,
}

/// An amqp connection's settings: its URLs (one per node), password applied,
/// and its TLS settings with their files read.
#[derive(Clone)]
struct AmqpConnection {
    urls: Vec<String>,
    tls: Option<AmqpTls>,
}

impl Connection {
    fn kind(&self) -> &'static str {
        match self {
            Connection::Amqp(_) => "amqp",
            Connection::Postgres(_) => "postgres",
            Connection::Stream(_) => "rabbitmq-stream",
            Connection::Unknown => "unknown",
        }
    }
}

struct Validator<'a> {
    problems: Vec<Problem>,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// The configuration file's folder: relative paths are resolved against it.
    base: PathBuf,
    /// What `signer` pins name: `daemon.trusted_keys`, once validated.
    pin_keys: PinKeys,
}

/// The keys a `signer` pin must be one of.
enum PinKeys {
    /// No `daemon.trusted_keys`: signatures are not verified, so a signer pin
    /// could never match.
    NotVerified,
    /// `daemon.trusted_keys` was wrong (reported): pins are not checked against it.
    Invalid,
    Keys(Vec<TrustedKey>),
}

impl Validator<'_> {
    fn report(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    /// The value if it has the expected type; `None` if absent or wrong (reported).
    fn typed<T>(&mut self, path: &str, value: Option<Lenient<T>>, expected: &str) -> Option<T> {
        match value?.0 {
            Ok(v) => Some(v),
            Err(found) => {
                self.report(
                    path,
                    format!("expected {expected}, found {}", describe(&found)),
                );
                None
            }
        }
    }

    /// A string that must be present and not empty.
    fn required(
        &mut self,
        path: &str,
        value: Option<Lenient<String>>,
        expected: &str,
    ) -> Option<String> {
        if value.is_none() {
            self.report(path, format!("missing; expected {expected}"));
            return None;
        }
        let s = self.typed(path, value, expected)?;
        if s.is_empty() {
            self.report(path, format!("is empty; expected {expected}"));
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, path: &str, value: Option<Lenient<bool>>, default: bool) -> bool {
        self.typed(path, value, "true or false").unwrap_or(default)
    }

    /// `default` when absent, the value when in `range`, `None` when wrong (reported).
    fn integer(
        &mut self,
        path: &str,
        value: Option<Lenient<i64>>,
        range: RangeInclusive<i64>,
        default: i64,
    ) -> Option<i64> {
        let expected = format!("an integer from {} to {}", range.start(), range.end());
        if value.is_none() {
            return Some(default);
        }
        let n = self.typed(path, value, &expected)?;
        if range.contains(&n) {
            Some(n)
        } else {
            self.report(path, format!("{n} is out of range; expected {expected}"));
            None
        }
    }

    /// `default` when absent, the duration when within `min..=max`, `None` when
    /// wrong (reported).
    fn duration(
        &mut self,
        path: &str,
        value: Option<Lenient<String>>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Option<Duration> {
        const EXPECTED: &str = "a duration with a unit, like \"200ms\", \"30s\" or \"5m\"";
        if value.is_none() {
            return Some(default);
        }
        let text = self.typed(path, value, EXPECTED)?;
        // The SDK's reading, so that plugins' durations and the daemon's own
        // take the same strings.
        let d = match sluice_plugin_sdk::time::parse_duration(&text) {
            Ok(d) => d,
            Err(e) => {
                self.report(path, e);
                return None;
            }
        };
        if d < min || d > max {
            self.report(
                path,
                format!(
                    "{text:?} is out of range; expected from {} to {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            return None;
        }
        Some(d)
    }

    /// A file-system path, relative ones resolved against `base`.
    fn folder(
        &mut self,
        path: &str,
        value: Option<Lenient<String>>,
        base: &Path,
    ) -> Option<PathBuf> {
        let dir = self.typed(path, value, "a folder path")?;
        if dir.is_empty() {
            self.report(path, "is empty; expected a folder path");
            return None;
        }
        Some(base.join(dir))
    }

    /// Checks a pipeline, connection or grant name.
    fn name(&mut self, path: &str, name: &str, what: &str) -> bool {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            self.report(
                path,
                format!(
                    "{name:?} is not a valid {what} name; expected lowercase letters, digits, `_` and `-`"
                ),
            );
        }
        valid
    }

    /// Checks a queue or exchange name or a routing key against AMQP's limits.
    fn amqp_name(&mut self, path: &str, name: &str, what: &str) {
        if name.len() > AMQP_NAME_MAX {
            self.report(
                path,
                format!(
                    "the {what} is {} bytes long; AMQP allows at most {AMQP_NAME_MAX}",
                    name.len()
                ),
            );
        }
        if what == "queue name" && name.starts_with("amq.") {
            self.report(
                path,
                format!("{name:?}: queue names starting with `amq.` are reserved by RabbitMQ"),
            );
        }
    }

    fn daemon(&mut self, raw: RawDaemon, base: &Path) -> DaemonConfig {
        let plugin_dir = match raw.plugin_dir {
            None => Some(base.join("plugins-dist")),
            some => self.folder("daemon.plugin_dir", some, base),
        };
        let cache_dir = match raw.cache_dir {
            None => Some(crate::plugin_runtime::cache::default_cache_dir().join("components")),
            some => self.folder("daemon.cache_dir", some, base),
        };
        let default_admin: SocketAddr = DEFAULT_ADMIN_ADDR.parse().expect("a valid address");
        let admin_addr = match raw.admin_addr {
            None | Some(toml::Value::Boolean(true)) => Some(default_admin),
            Some(toml::Value::String(s)) if s.is_empty() => Some(default_admin),
            Some(toml::Value::Boolean(false)) => None,
            Some(toml::Value::String(s)) => match s.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.report(
                        "daemon.admin_addr",
                        format!(
                            "{s:?} is not an address; expected IP:port, like \"127.0.0.1:9464\" or \"[::]:9464\" (not a host name), or false for no admin server"
                        ),
                    );
                    None
                }
            },
            Some(other) => {
                self.report(
                    "daemon.admin_addr",
                    format!(
                        "expected an IP:port string like \"127.0.0.1:9464\", or false for no admin server, found {}",
                        describe(&other)
                    ),
                );
                None
            }
        };
        let shutdown_timeout = self.duration(
            "daemon.shutdown_timeout",
            raw.shutdown_timeout,
            Duration::from_secs(30),
            (Duration::from_millis(1), Duration::from_secs(3600)),
        );
        let memory_mib = self.integer(
            "daemon.plugin_memory_mib",
            raw.plugin_memory_mib,
            1..=4096,
            256,
        );
        let plugin_call_timeout = self.duration(
            "daemon.plugin_call_timeout",
            raw.plugin_call_timeout,
            Duration::from_secs(10),
            // The runtime checks time limits every 10ms; less cannot be enforced.
            (Duration::from_millis(10), Duration::from_secs(600)),
        );
        let plugin_call_deadline = self.duration(
            "daemon.plugin_call_deadline",
            raw.plugin_call_deadline,
            Duration::from_secs(60),
            (Duration::from_millis(10), Duration::from_secs(3600)),
        );
        let store_call_timeout = self.duration(
            "daemon.store_call_timeout",
            raw.store_call_timeout,
            Duration::from_secs(300),
            (Duration::from_millis(10), Duration::from_secs(3600)),
        );
        let trusted_keys = self.trusted_keys(raw.trusted_keys, base);
        DaemonConfig {
            plugin_dir: plugin_dir.unwrap_or_default(),
            cache_dir: cache_dir.unwrap_or_default(),
            admin_addr,
            shutdown_timeout: shutdown_timeout.unwrap_or_default(),
            plugin_memory_limit: (memory_mib.unwrap_or(256) as usize) << 20,
            plugin_call_timeout: plugin_call_timeout.unwrap_or_default(),
            plugin_call_deadline: plugin_call_deadline.unwrap_or_default(),
            store_call_timeout: store_call_timeout.unwrap_or_default(),
            trusted_keys,
        }
    }

    /// `daemon.trusted_keys`: every key file read and parsed now, so that a
    /// missing or broken key is a configuration error, not a daemon that
    /// refuses every plugin.
    fn trusted_keys(
        &mut self,
        value: Option<Lenient<Vec<String>>>,
        base: &Path,
    ) -> Option<Vec<TrustedKey>> {
        let at = "daemon.trusted_keys";
        let files = self.typed(at, value, "a list of public key files")?;
        if files.is_empty() {
            self.report(
                at,
                "is empty, which would refuse every plugin; list the minisign public keys plugins must be signed with, or remove the key to load unsigned plugins",
            );
            return None;
        }
        let mut keys = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let at = format!("{at}[{i}]");
            if file.is_empty() {
                self.report(at, "is empty; expected a public key file");
                continue;
            }
            let path = base.join(file);
            match TrustedKey::read(&path) {
                Ok(key) => keys.push(key),
                Err(why) => self.report(at, format!("{}: {why}", path.display())),
            }
        }
        (keys.len() == files.len()).then_some(keys)
    }

    fn connections(
        &mut self,
        raw: BTreeMap<String, RawConnection>,
    ) -> BTreeMap<String, Connection> {
        let mut out = BTreeMap::new();
        for (name, raw) in raw {
            let at = key_path("connections", &name);
            self.name(&at, &name, "connection");
            let kind_path = format!("{at}.type");
            let kind = self.required(&kind_path, raw.kind, CONNECTION_TYPES);
            let urls = self.connection_urls(&at, kind.as_deref(), raw.url, raw.urls);
            let password = self.password(&at, &name, raw.password_env);
            if kind.as_deref() == Some("postgres") && raw.tls.is_some() {
                self.report(
                    format!("{at}.tls"),
                    "is for amqp connections; a postgres connection takes its TLS settings in its URL (sslmode, sslrootcert, sslcert, sslkey)",
                );
            }
            let connection = match kind.as_deref() {
                Some("amqp") => {
                    // Checked even when a URL is wrong, to report both.
                    let first = urls.as_ref().and_then(|u| u.first());
                    let tls = self.amqp_tls(&at, first.map(|(_, url)| url.as_str()), raw.tls);
                    let urls = urls.and_then(|urls| {
                        self.each_url(urls, |v, path, url| {
                            v.amqp_url(path, url, password.as_deref())
                        })
                    });
                    Connection::Amqp(match (urls, tls) {
                        (Some(urls), Ok(tls)) => Some(AmqpConnection { urls, tls }),
                        _ => None,
                    })
                }
                Some("postgres") => Connection::Postgres(
                    urls.and_then(|mut urls| urls.pop())
                        .and_then(|(path, url)| {
                            self.postgres_grant(&path, &url, password.as_deref())
                        })
                        .map(Box::new),
                ),
                Some("rabbitmq-stream") => {
                    if raw.tls.is_some() {
                        self.report(
                            format!("{at}.tls"),
                            "is not supported on rabbitmq-stream connections yet; read streams over a private network, or use an amqp connection with TLS and a classic or quorum queue",
                        );
                    }
                    Connection::Stream(urls.and_then(|urls| {
                        self.each_url(urls, |v, path, url| {
                            v.stream_url(path, url, password.as_deref())
                        })
                    }))
                }
                Some(other) => {
                    self.report(
                        kind_path,
                        format!("unknown connection type {other:?}; expected {CONNECTION_TYPES}"),
                    );
                    Connection::Unknown
                }
                None => Connection::Unknown,
            };
            out.insert(name, connection);
        }
        out
    }

    /// A connection's `url`, or its `urls` (the nodes of a RabbitMQ cluster,
    /// amqp and rabbitmq-stream connections only): each with its key path.
    /// `None` when wrong (reported).
    fn connection_urls(
        &mut self,
        at: &str,
        kind: Option<&str>,
        url: Option<Lenient<String>>,
        urls: Option<Lenient<Vec<String>>>,
    ) -> Option<Vec<(String, String)>> {
        let list_path = format!("{at}.urls");
        match (url, urls) {
            (Some(_), Some(_)) => {
                self.report(
                    list_path,
                    "is given with `url`; give one: `url` for one node, `urls` for the nodes of a cluster",
                );
                None
            }
            (url, None) => {
                let path = format!("{at}.url");
                if url.is_none() {
                    let expected = match kind {
                        Some("postgres") | None => "a connection URL",
                        Some(_) => "a connection URL (or `urls`, a list of a cluster's nodes)",
                    };
                    self.report(path, format!("missing; expected {expected}"));
                    return None;
                }
                let url = self.required(&path, url, "a connection URL")?;
                Some(vec![(path, url)])
            }
            (None, urls) => {
                if kind == Some("postgres") {
                    self.report(
                        list_path,
                        "is for amqp and rabbitmq-stream connections (the nodes of a RabbitMQ cluster); a postgres connection takes one `url`",
                    );
                    return None;
                }
                let urls = self.typed(&list_path, urls, "a list of connection URLs")?;
                if urls.is_empty() {
                    self.report(
                        list_path,
                        "is empty; expected the URLs of the cluster's nodes",
                    );
                    return None;
                }
                let mut out = Vec::new();
                let mut ok = true;
                for (k, url) in urls.into_iter().enumerate() {
                    let path = format!("{list_path}[{k}]");
                    if url.is_empty() {
                        self.report(&path, "is empty; expected a connection URL");
                        ok = false;
                    } else if let Some((first, _)) = out.iter().find(|(_, u)| *u == url) {
                        self.report(&path, format!("repeats {first}"));
                        ok = false;
                    } else {
                        out.push((path, url));
                    }
                }
                if !ok {
                    // The others are still checked, to report every problem;
                    // the connection is wrong all the same.
                    self.each_url(out, |v, path, url| match kind {
                        Some("amqp") => v.amqp_url(path, url, None).map(drop),
                        Some("rabbitmq-stream") => v.stream_url(path, url, None).map(drop),
                        _ => Some(()),
                    });
                    return None;
                }
                Some(out)
            }
        }
    }

    /// `check` applied to every URL of a connection: all of them when each is
    /// valid, `None` when one is not (every problem reported).
    fn each_url<T>(
        &mut self,
        urls: Vec<(String, String)>,
        mut check: impl FnMut(&mut Self, &str, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let checked: Vec<Option<T>> = urls
            .iter()
            .map(|(path, url)| check(self, path, url))
            .collect();
        checked.into_iter().collect()
    }

    /// The password `password_env` names, read from the environment.
    fn password(
        &mut self,
        at: &str,
        connection: &str,
        password_env: Option<Lenient<String>>,
    ) -> Option<String> {
        let path = format!("{at}.password_env");
        let var = self.typed(&path, password_env, "the name of an environment variable")?;
        if var.is_empty() || var.contains('=') || var.contains('\0') {
            self.report(
                path,
                format!("{var:?} is not an environment variable name; expected a name like \"SLUICE_DB_PASSWORD\""),
            );
            return None;
        }
        match (self.env)(&var) {
            None => {
                self.report(
                    path,
                    format!(
                        "environment variable {var} is not set; it must hold the password of connection `{connection}`"
                    ),
                );
                None
            }
            Some(p) if p.is_empty() => {
                self.report(
                    path,
                    format!(
                        "environment variable {var} is empty; it must hold the password of connection `{connection}`"
                    ),
                );
                None
            }
            Some(p) => Some(p),
        }
    }

    /// An amqp connection's `tls` table: its files read and checked now, so
    /// that `check` refuses what a connect would fail on. `Err` when wrong
    /// (reported).
    fn amqp_tls(
        &mut self,
        at: &str,
        url: Option<&str>,
        raw: Option<RawAmqpTls>,
    ) -> Result<Option<AmqpTls>, ()> {
        let Some(raw) = raw else {
            return Ok(None);
        };
        let at = format!("{at}.tls");
        let file = |v: &mut Self, key: &str, value: Option<Lenient<String>>| {
            let path = format!("{at}.{key}");
            let file = v.typed(&path, value, "a file path")?;
            if file.is_empty() {
                v.report(path, "is empty; expected a file path");
                return None;
            }
            Some(v.base.join(file))
        };
        let (ca, cert, key) = (raw.ca_file, raw.cert_file, raw.key_file);
        let given = [ca.is_some(), cert.is_some(), key.is_some()];
        let ca = file(self, "ca_file", ca);
        let cert = file(self, "cert_file", cert);
        let key = file(self, "key_file", key);
        // A value given but not taken was of the wrong type or empty (reported).
        let mut wrong = given != [ca.is_some(), cert.is_some(), key.is_some()];
        if let Some(url) = url
            && !url
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("amqps://")
        {
            self.report(
                &at,
                "TLS settings on an `amqp://` URL, which connects without TLS; use `amqps://` (port 5671 by default) or remove `tls`",
            );
            wrong = true;
        }
        if wrong {
            return Err(());
        }
        match AmqpTls::read(ca.as_deref(), cert.as_deref(), key.as_deref()) {
            Ok(tls) => Ok(Some(tls)),
            Err(problems) => {
                for problem in problems {
                    self.report(format!("{at}.{}", problem.key()), problem.to_string());
                }
                Err(())
            }
        }
    }

    fn amqp_url(&mut self, path: &str, url: &str, password: Option<&str>) -> Option<String> {
        let parsed = match amqp_url::parse(url) {
            Ok(parsed) => parsed,
            Err(why) => {
                self.report(path, format!("invalid AMQP URL: {why}"));
                return None;
            }
        };
        let url = match password {
            None => url.to_string(),
            Some(password) => match parsed.with_password(password) {
                Ok(url) => url,
                Err(why) => {
                    self.report(path, format!("cannot apply password_env: {why}"));
                    return None;
                }
            },
        };
        // As lapin will read it when it connects: a bad option is found now,
        // named, rather than at every reconnect with a message naming none.
        if let Err(problems) = amqp_url::read_as_lapin(&url) {
            for problem in problems {
                self.report(path, problem);
            }
            return None;
        }
        Some(url)
    }

    /// A rabbitmq-stream connection's URL:
    /// `rabbitmq-stream://user:password@host:port/vhost`, every part but the
    /// host optional (guest, guest, 5552, `/`).
    fn stream_url(
        &mut self,
        path: &str,
        url: &str,
        password: Option<&str>,
    ) -> Option<StreamEndpoint> {
        const EXPECTED: &str = "expected rabbitmq-stream://user@host:5552/vhost";
        let parsed = match url::Url::parse(url) {
            Ok(parsed) => parsed,
            // The parser's message names the flaw, never the URL (no password shows).
            Err(e) => {
                self.report(path, format!("invalid URL ({e}); {EXPECTED}"));
                return None;
            }
        };
        if parsed.scheme() != "rabbitmq-stream" {
            self.report(
                path,
                format!(
                    "the scheme is `{}`; {EXPECTED} (the stream protocol, port 5552 by default, not AMQP's 5672)",
                    parsed.scheme()
                ),
            );
            return None;
        }
        let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
            self.report(path, format!("the URL names no host; {EXPECTED}"));
            return None;
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let user = match parsed.username() {
            "" => "guest".to_string(),
            user => decode(user),
        };
        let password = match (password, parsed.password()) {
            (Some(p), _) => p.to_string(),
            (None, Some(p)) => decode(p),
            (None, None) => "guest".to_string(),
        };
        let vhost = match parsed.path() {
            "" | "/" => "/".to_string(),
            p => decode(&p[1..]),
        };
        Some(StreamEndpoint {
            host: host.trim_matches(['[', ']']).to_string(),
            port: parsed.port().unwrap_or(5552),
            user,
            password,
            vhost,
        })
    }

    fn postgres_grant(
        &mut self,
        path: &str,
        url: &str,
        password: Option<&str>,
    ) -> Option<PostgresGrant> {
        let grant = match PostgresGrant::from_url(url) {
            Ok(grant) => grant,
            // TLS options and their files: the message names the option and the
            // file, and nothing else of the string.
            Err(GrantError::Tls(e)) => {
                self.report(path, e.to_string());
                return None;
            }
            Err(GrantError::Invalid(e)) => {
                // The cause (which option is wrong) is in the source chain; no
                // part of it repeats the string, so no password shows.
                let why = crate::telemetry::error_chain(&e);
                self.report(
                    path,
                    format!(
                        "invalid Postgres connection string ({why}); expected postgres://user@host:5432/dbname or \"host=... user=... dbname=...\""
                    ),
                );
                return None;
            }
        };
        if grant.config().get_hosts().is_empty() {
            self.report(
                path,
                "the connection string names no host; expected postgres://user@host:5432/dbname",
            );
            return None;
        }
        Some(match password {
            Some(password) => grant.with_password(password),
            None => grant,
        })
    }
}
