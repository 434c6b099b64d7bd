use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::*;

/// A minimal valid configuration; tests append to it or replace parts.
const MINIMAL: &str = r#"
[connections.rabbit]
type = "amqp"
url = "amqp://guest@127.0.0.1:5672/%2f"

[connections.warehouse]
type = "postgres"
url = "postgres://postgres@127.0.0.1:5432/postgres"

[[pipelines]]
name = "cdr"
connection = "rabbit"
queue = { name = "cdr", bindings = [{ exchange = "cdr", routing_key = "cdr.#" }] }
source = { plugin = "json-source" }

[[pipelines.writers]]
plugin = "postgres-writer"
grants = { postgres = ["warehouse"] }
"#;

fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_str_with_env(text, Path::new("/etc/sluice/config.toml"), |name| {
        env.get(name).cloned()
    })
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, &[])
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(_) => panic!("expected problems in:\n{text}"),
        Err(e) => e.problems,
    }
}

fn paths(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|p| p.path.as_str()).collect()
}

/// The problem at `path`, failing the test if there is none.
fn at<'a>(problems: &'a [Problem], path: &str) -> &'a Problem {
    problems
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem at {path}: {problems:#?}"))
}

#[test]
fn root_config_toml_parses_and_validates() {
    let file = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config.toml"));
    let config = Config::load(file).unwrap_or_else(|e| panic!("{e}"));
    let folder = std::path::absolute(file.parent().unwrap()).unwrap();
    assert_eq!(config.daemon.plugin_dir, folder.join("plugins-dist"));
    assert_eq!(
        config.daemon.admin_addr,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(config.pipelines.len(), 1);
    let cdr = &config.pipelines[0];
    assert_eq!(cdr.name, "cdr");
    assert_eq!(cdr.amqp_connection, "rabbit");
    assert_eq!(cdr.amqp_urls, ["amqp://guest:guest@127.0.0.1:5672/%2f"]);
    assert_eq!((cdr.prefetch, cdr.consumers), (2000, 2));
    assert_eq!(cdr.batch.max_messages, 1000);
    assert_eq!(cdr.queue.name, "cdr");
    assert_eq!(
        cdr.queue.bindings,
        [Binding {
            exchange: "cdr".into(),
            exchange_type: ExchangeType::Topic,
            routing_key: "cdr.#".into()
        }]
    );
    assert_eq!(cdr.dead_letter.queue.as_deref(), Some("cdr.dead"));
    assert_eq!(cdr.source.plugin, "json-source");
    let columns = cdr.source.config["columns"].as_array().unwrap();
    let names: Vec<&str> = columns
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "call_id",
            "caller",
            "callee",
            "started_at",
            "duration_s",
            "cell",
            "cost",
            "call_type",
            "roaming"
        ]
    );
    assert_eq!(
        columns[0],
        json!({"name": "call_id", "type": "text", "key": true, "path": "call.id"})
    );
    let writer = &cdr.writers[0];
    assert_eq!(writer.plugin, "postgres-writer");
    assert_eq!(
        writer.config,
        json!({"connection": "warehouse", "table": "cdr"})
    );
    assert_eq!(writer.postgres_grants, ["warehouse"]);
    let grant = &writer.grants.postgres["warehouse"];
    assert_eq!(grant.config().get_dbname(), Some("postgres"));
}

#[test]
fn reports_every_mistake_at_once_with_its_key_path() {
    let text = r#"
[daemon]
plugin_dir = "plugins"
colour = "blue"

[connections.rabbit]
type = "amqp"
url = "amqp://sluice@127.0.0.1:5672/%2f"

[connections.warehouse]
type = "postgres"
url = "postgres://sluice@db/warehouse"
password_env = "SLUICE_TEST_UNSET_PASSWORD"

[[pipelines]]
name = "cdr"
connection = "rabbitt"
prefetch = 100
batch = { max_messages = 500, max_wait = "200" }
queue = { name = "cdr" }
source = { plugin = "json-source" }
writers = [{ plugin = "postgres-writer", grants = { postgres = ["warehouse"] } }]

[[pipelines]]
name = "events"
connection = "rabbit"
queue = { name = "events", durable = true }
source = { plugin = "json-source" }
writers = [{ plugin = "postgres-writer" }]
"#;
    let error = parse(text).unwrap_err();
    let problems = &error.problems;
    assert_eq!(
        paths(problems),
        [
            "daemon.colour",
            "connections.warehouse.password_env",
            "pipelines[0].connection",
            "pipelines[0].batch.max_wait",
            "pipelines[0].prefetch",
            "pipelines[1].queue.durable",
        ],
        "{error}"
    );
    assert!(
        at(problems, "daemon.colour")
            .message
            .contains("unknown key `colour`")
    );
    assert!(
        at(problems, "connections.warehouse.password_env")
            .message
            .contains("SLUICE_TEST_UNSET_PASSWORD is not set")
    );
    let connection = &at(problems, "pipelines[0].connection").message;
    assert!(
        connection.contains("no connection named `rabbitt`"),
        "{connection}"
    );
    assert!(
        connection.contains("did you mean `rabbit`?"),
        "{connection}"
    );
    assert!(
        at(problems, "pipelines[0].batch.max_wait")
            .message
            .contains("\"200\" is not a duration")
    );
    assert!(
        at(problems, "pipelines[0].prefetch")
            .message
            .contains("prefetch 100 is smaller than batch.max_messages 500")
    );
    assert!(
        at(problems, "pipelines[1].queue.durable")
            .message
            .contains("expected one of: name, declare, type, delivery_limit, bindings")
    );
    let shown = error.to_string();
    assert!(
        shown.starts_with("/etc/sluice/config.toml: 6 problems:\n  - daemon.colour: unknown key"),
        "{shown}"
    );
}

#[test]
fn wrong_types_are_reported_alongside_other_problems() {
    let text = MINIMAL.replace(
        "name = \"cdr\"\nconnection",
        "name = \"cdr\"\nconsumers = \"two\"\nprefetch = 70000\nconnection",
    ) + "\n[daemon]\nplugin_memory_mib = 0\nshutdown_timeout = 30\n";
    let problems = problems(&text);
    assert_eq!(
        paths(&problems),
        [
            "daemon.shutdown_timeout",
            "daemon.plugin_memory_mib",
            "pipelines[0].consumers",
            "pipelines[0].prefetch"
        ],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("found the integer 30"));
    assert!(
        problems[1]
            .message
            .contains("expected an integer from 1 to 4096")
    );
    assert!(problems[2].message.contains("found the string \"two\""));
    assert!(problems[3].message.contains("70000 is out of range"));
}

#[test]
fn syntax_error_is_one_problem_with_its_position() {
    let error = parse("[daemon]\nplugin_dir = \"plugins\"\nadmin_addr = \n").unwrap_err();
    assert_eq!(error.problems.len(), 1, "{error}");
    assert_eq!(error.problems[0].path, "line 3, column 14");
}

#[test]
fn a_value_where_a_table_belongs_is_one_problem_with_its_position() {
    let error = parse(&MINIMAL.replace("queue = {", "batch = 5\nqueue = {")).unwrap_err();
    assert_eq!(error.problems.len(), 1, "{error}");
    assert!(error.problems[0].path.starts_with("line "), "{error}");
    assert!(
        error.problems[0]
            .message
            .contains("a table with max_messages and max_wait"),
        "{error}"
    );
}

#[test]
fn applies_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(
        config.daemon,
        DaemonConfig {
            plugin_dir: "/etc/sluice/plugins-dist".into(),
            cache_dir: crate::plugin_runtime::cache::default_cache_dir().join("components"),
            admin_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            shutdown_timeout: Duration::from_secs(30),
            plugin_memory_limit: 256 << 20,
            plugin_call_timeout: Duration::from_secs(10),
            plugin_call_deadline: Duration::from_secs(60),
            store_call_timeout: Duration::from_secs(300),
            trusted_keys: None,
        }
    );
    let p = &config.pipelines[0];
    assert_eq!((p.prefetch, p.consumers), (2000, 2));
    assert_eq!(
        p.batch,
        BatchConfig {
            max_messages: 1000,
            max_wait: Duration::from_millis(200)
        }
    );
    assert_eq!(
        p.queue,
        QueueConfig {
            name: "cdr".into(),
            declare: true,
            kind: QueueKind::Classic,
            delivery_limit: None,
            bindings: vec![Binding {
                exchange: "cdr".into(),
                exchange_type: ExchangeType::Topic,
                routing_key: "cdr.#".into()
            }],
            stream: None,
        }
    );
    assert_eq!(
        p.dead_letter,
        DeadLetterConfig {
            exchange: "cdr.dead".into(),
            queue: Some("cdr.dead".into()),
            queue_kind: QueueKind::Classic,
            declare: true
        }
    );
    assert_eq!(
        p.retry,
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30)
        }
    );
    assert_eq!(p.source.config, json!({}));
    assert_eq!(p.writers[0].config, json!({}));
}

#[test]
fn default_prefetch_is_twice_the_batch_capped_at_65535() {
    let with_batch = |n: u32| {
        MINIMAL.replace(
            "queue = {",
            &format!("batch = {{ max_messages = {n} }}\nqueue = {{"),
        )
    };
    assert_eq!(parse(&with_batch(10)).unwrap().pipelines[0].prefetch, 20);
    assert_eq!(
        parse(&with_batch(40_000)).unwrap().pipelines[0].prefetch,
        65535
    );
    let problems = problems(&with_batch(70_000));
    assert_eq!(paths(&problems), ["pipelines[0].batch.max_messages"]);
    assert!(problems[0].message.contains("largest prefetch (65535)"));
}

#[test]
fn resolves_relative_paths_against_the_config_folder() {
    let text =
        format!("[daemon]\nplugin_dir = \"plugins\"\ncache_dir = \"/var/cache/sluice\"\n{MINIMAL}");
    let config = parse(&text).unwrap();
    assert_eq!(config.daemon.plugin_dir, Path::new("/etc/sluice/plugins"));
    assert_eq!(config.daemon.cache_dir, Path::new("/var/cache/sluice"));

    // A bare file name resolves against the working directory, made absolute.
    let config = Config::from_str_with_env(&text, Path::new("config.toml"), |_| None).unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(
        config.daemon.plugin_dir,
        std::path::absolute(cwd.join("plugins")).unwrap()
    );
    assert_eq!(config.file, Path::new("config.toml"));
}

#[test]
fn passwords_from_the_environment_reach_url_and_grant_but_never_output() {
    let secret = "s3cr:t/p@ss";
    let text = MINIMAL
        .replace(
            "url = \"amqp://guest@127.0.0.1:5672/%2f\"",
            "url = \"amqp://guest@127.0.0.1:5672/%2f\"\npassword_env = \"RABBIT_PW\"",
        )
        .replace(
            "url = \"postgres://postgres@127.0.0.1:5432/postgres\"",
            "url = \"postgres://postgres@127.0.0.1:5432/postgres\"\npassword_env = \"PG_PW\"",
        );
    let env = [("RABBIT_PW", secret), ("PG_PW", secret)];
    let config = parse_with(&text, &env).unwrap();
    let p = &config.pipelines[0];
    assert_eq!(
        p.amqp_urls,
        ["amqp://guest:s3cr%3At%2Fp%40ss@127.0.0.1:5672/%2f"]
    );
    assert_eq!(
        p.amqp_url_redacted(0),
        "amqp://guest:***@127.0.0.1:5672/%2f"
    );
    let grant = &p.writers[0].grants.postgres["warehouse"];
    assert_eq!(grant.config().get_password(), Some(secret.as_bytes()));

    let debug = format!("{config:?} {config:#?}");
    assert!(!debug.contains("s3cr"), "{debug}");
    assert!(debug.contains("guest:***@"), "{debug}");

    // An error elsewhere in the file does not show the password either.
    let broken = text.replace(
        "name = \"cdr\"\nconnection",
        "name = \"cdr\"\nconsumers = 0\nconnection",
    );
    let error = parse_with(&broken, &env).unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(!shown.contains("s3cr"), "{shown}");
}

#[test]
fn a_password_for_an_amqp_url_without_a_user_is_refused() {
    let text = MINIMAL.replace(
        "url = \"amqp://guest@127.0.0.1:5672/%2f\"",
        "url = \"amqp://127.0.0.1:5672/%2f\"\npassword_env = \"RABBIT_PW\"",
    );
    let error = parse_with(&text, &[("RABBIT_PW", "x")]).unwrap_err();
    assert_eq!(paths(&error.problems), ["connections.rabbit.url"]);
    assert!(error.problems[0].message.contains("no user"));
}

#[test]
fn refuses_invalid_urls() {
    let text = MINIMAL
        .replace(
            "amqp://guest@127.0.0.1:5672/%2f",
            "http://guest:hunter2@127.0.0.1/",
        )
        .replace(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://db:notaport/x",
        );
    let error = parse(&text).unwrap_err();
    assert_eq!(
        paths(&error.problems),
        ["connections.rabbit.url", "connections.warehouse.url"],
        "{error}"
    );
    assert!(
        error.problems[0]
            .message
            .contains("expected `amqp` or `amqps`")
    );
    assert!(!error.to_string().contains("hunter2"));
}

#[test]
fn url_options_are_read_as_the_clients_read_them_and_named() {
    let text = MINIMAL
        .replace(
            "amqp://guest@127.0.0.1:5672/%2f",
            "amqp://guest@127.0.0.1:5672/%2f?heartbeat=abc",
        )
        .replace(
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://postgres@127.0.0.1:5432/postgres?connect_timeout=soon",
        );
    let error = parse_with(&text, &[]).unwrap_err();
    assert_eq!(
        paths(&error.problems),
        ["connections.rabbit.url", "connections.warehouse.url"],
        "{error}"
    );
    let amqp = &error.problems[0].message;
    assert!(
        amqp.starts_with("option heartbeat: invalid digit found in string"),
        "{amqp}"
    );
    let postgres = &error.problems[1].message;
    assert!(postgres.contains("connect_timeout"), "{postgres}");
}

#[test]
fn a_connection_key_typo_lists_the_keys_a_connection_takes() {
    let text = MINIMAL.replace(
        "type = \"postgres\"\n",
        "type = \"postgres\"\npasword_env = \"SLUICE_DB_PASSWORD\"\n",
    );
    let problems = problems(&text);
    let typo = at(&problems, "connections.warehouse.pasword_env");
    assert_eq!(
        typo.message,
        "unknown key `pasword_env` (did you mean `password_env`?); expected one of: type, url, urls, password_env, tls",
        "{problems:#?}"
    );
}

#[test]
fn connections_and_grants_must_have_the_right_type() {
    let text = MINIMAL
        .replace("connection = \"rabbit\"", "connection = \"warehouse\"")
        .replace(
            "postgres = [\"warehouse\"]",
            "postgres = [\"rabbit\", \"lake\"]",
        );
    let problems = problems(&text);
    assert_eq!(
        paths(&problems),
        [
            "pipelines[0].connection",
            "pipelines[0].writers[0].grants.postgres[0]",
            "pipelines[0].writers[0].grants.postgres[1]"
        ],
        "{problems:#?}"
    );
    assert!(
        problems[0]
            .message
            .contains("`warehouse` is a postgres connection")
    );
    assert!(
        problems[1]
            .message
            .contains("only postgres connections can be granted")
    );
    assert!(
        problems[2]
            .message
            .contains("postgres connections: warehouse")
    );
}

#[test]
fn unknown_connection_type_is_reported_once() {
    let text = MINIMAL.replace("type = \"amqp\"", "type = \"kafka\"");
    let problems = problems(&text);
    assert_eq!(
        paths(&problems),
        ["connections.rabbit.type"],
        "{problems:#?}"
    );
    assert!(
        problems[0]
            .message
            .contains("expected \"amqp\", \"postgres\" or \"rabbitmq-stream\"")
    );
}

#[test]
fn delivery_limit_is_for_quorum_queues_only() {
    let classic = MINIMAL.replace(
        "queue = { name = \"cdr\"",
        "queue = { name = \"cdr\", delivery_limit = 5",
    );
    let problems = problems(&classic);
    assert_eq!(paths(&problems), ["pipelines[0].queue.delivery_limit"]);
    assert!(problems[0].message.contains("only to quorum queues"));

    let quorum = MINIMAL.replace(
        "queue = { name = \"cdr\"",
        "queue = { name = \"cdr\", type = \"quorum\", delivery_limit = 5",
    );
    let queue = &parse(&quorum).unwrap().pipelines[0].queue;
    assert_eq!(
        (queue.kind, queue.delivery_limit),
        (QueueKind::Quorum, Some(5))
    );
}

#[test]
fn writers_are_required() {
    let text = MINIMAL
        .split("[[pipelines.writers]]")
        .next()
        .unwrap()
        .to_string()
        + "writers = []\n";
    let problems = problems(&text);
    assert_eq!(paths(&problems), ["pipelines[0].writers"]);
    assert!(problems[0].message.contains("at least one"));
}

#[test]
fn pipelines_must_have_unique_names_and_queues() {
    let second = MINIMAL.split("[[pipelines]]").nth(1).unwrap();
    let text = format!("{MINIMAL}\n[[pipelines]]{second}");
    let problems = problems(&text);
    assert_eq!(
        paths(&problems),
        ["pipelines[1].name", "pipelines[1].queue.name"],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("already used by pipelines[0]"));
    assert!(
        problems[1]
            .message
            .contains("already consumed by pipelines[0]")
    );
}

#[test]
fn dead_letters_must_not_route_back_into_the_queue() {
    let text = MINIMAL.replace(
        "source = {",
        "dead_letter = { exchange = \"cdr\", queue = \"cdr\" }\nsource = {",
    );
    let problems = problems(&text);
    assert_eq!(
        paths(&problems),
        [
            "pipelines[0].dead_letter.exchange",
            "pipelines[0].dead_letter.queue"
        ]
    );
    let none = MINIMAL.replace("source = {", "dead_letter = { queue = false }\nsource = {");
    assert_eq!(parse(&none).unwrap().pipelines[0].dead_letter.queue, None);
}

#[test]
fn bindings_need_a_routing_key_for_topic_and_direct_exchanges() {
    let text = MINIMAL.replace(
        "bindings = [{ exchange = \"cdr\", routing_key = \"cdr.#\" }]",
        "bindings = [{ exchange = \"cdr\" }, { exchange = \"all\", exchange_type = \"fanout\" }, { exchange = \"\", routing_key = \"x\" }]",
    );
    let problems = problems(&text);
    assert_eq!(
        paths(&problems),
        [
            "pipelines[0].queue.bindings[0].routing_key",
            "pipelines[0].queue.bindings[2].exchange"
        ],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("\"#\" takes every message"));
    assert!(problems[1].message.contains("default exchange"));
}

#[test]
fn plugin_config_tables_pass_through_as_json() {
    let text = MINIMAL.replace(
        "source = { plugin = \"json-source\" }",
        "[pipelines.source]\nplugin = \"json-source\"\n[pipelines.source.config]\nfree = { form = [1, 2.5, true] }\nsince = 2026-01-01T00:00:00Z\n[[pipelines.writers]]\nplugin = \"postgres-writer\"\nconfig = \"table=cdr\"\n",
    );
    let error = parse(&text).unwrap_err();
    // The free-form source config raises no unknown keys; a writer config that is
    // not a table is refused.
    assert_eq!(
        paths(&error.problems),
        ["pipelines[0].writers[0].config"],
        "{error}"
    );

    let text = text.replace("config = \"table=cdr\"\n", "");
    let config = parse(&text).unwrap();
    assert_eq!(
        config.pipelines[0].source.config,
        json!({"free": {"form": [1, 2.5, true]}, "since": "2026-01-01T00:00:00Z"})
    );
}

#[test]
fn admin_addr_can_be_off_default_or_an_address() {
    let with = |value: &str| format!("[daemon]\nadmin_addr = {value}\n{MINIMAL}");
    assert_eq!(parse(&with("false")).unwrap().daemon.admin_addr, None);
    assert_eq!(
        parse(&with("\"\"")).unwrap().daemon.admin_addr,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(
        parse(&with("\"[::]:9000\"")).unwrap().daemon.admin_addr,
        Some("[::]:9000".parse().unwrap())
    );
    let problems = problems(&with("\"localhost:9464\""));
    assert_eq!(paths(&problems), ["daemon.admin_addr"]);
    assert!(problems[0].message.contains("not a host name"));
}

#[test]
fn an_empty_file_asks_for_a_pipeline() {
    let problems = problems("");
    assert_eq!(paths(&problems), ["pipelines"]);
}

#[test]
fn retry_backoffs_must_be_ordered() {
    let text = MINIMAL.replace(
        "source = {",
        "retry = { initial_backoff = \"10s\", max_backoff = \"1s\" }\nsource = {",
    );
    let problems = problems(&text);
    assert_eq!(paths(&problems), ["pipelines[0].retry.max_backoff"]);
}

/// MINIMAL with the writer's grants replaced by `grants`.
fn with_grants(grants: &str) -> String {
    MINIMAL.replace("grants = { postgres = [\"warehouse\"] }", grants)
}

#[test]
fn http_tcp_and_directory_grants_are_read() {
    let config = parse(&with_grants(
        r#"grants = { http = ["http://127.0.0.1:8123", "https://api.example.com/v1/"], tcp = ["127.0.0.1:6379", "[::1]:6380"], directory = "out/cdr", postgres = ["warehouse"] }"#,
    ))
    .unwrap();
    let grants = &config.pipelines[0].writers[0].grants;
    let http: Vec<String> = grants.http.iter().map(ToString::to_string).collect();
    assert_eq!(
        http,
        ["http://127.0.0.1:8123/", "https://api.example.com:443/v1"]
    );
    let tcp: Vec<String> = grants.tcp.iter().map(ToString::to_string).collect();
    assert_eq!(tcp, ["127.0.0.1:6379", "[::1]:6380"]);
    // Relative to the configuration file's folder.
    assert_eq!(
        grants.directory.as_deref(),
        Some(Path::new("/etc/sluice/out/cdr"))
    );
    assert!(grants.postgres.contains_key("warehouse"));

    let absolute = parse(&with_grants(r#"grants = { directory = "/srv/cdr" }"#)).unwrap();
    assert_eq!(
        absolute.pipelines[0].writers[0].grants.directory.as_deref(),
        Some(Path::new("/srv/cdr"))
    );
    let none = parse(&with_grants("")).unwrap();
    let grants = &none.pipelines[0].writers[0].grants;
    assert!(grants.http.is_empty() && grants.tcp.is_empty() && grants.directory.is_none());
}

#[test]
fn bad_grants_are_all_reported_with_their_key_paths() {
    let problems = problems(&with_grants(
        r#"grants = { http = ["ftp://files.example.com", "not a url", "http://h/x?key=1", "http://h/x#frag", "http://h:0", "http://h", "http://h/"], tcp = ["127.0.0.1", "127.0.0.1:0", "host:port", "127.0.0.1:6379"], directory = "" }"#,
    ));
    let g = "pipelines[0].writers[0].grants";
    assert_eq!(
        paths(&problems),
        [
            format!("{g}.http[0]"),
            format!("{g}.http[1]"),
            format!("{g}.http[2]"),
            format!("{g}.http[3]"),
            format!("{g}.http[4]"),
            format!("{g}.http[6]"),
            format!("{g}.tcp[0]"),
            format!("{g}.tcp[1]"),
            format!("{g}.tcp[2]"),
            format!("{g}.directory"),
        ]
    );
    let message = |path: &str| at(&problems, &format!("{g}.{path}")).message.clone();
    assert!(message("http[0]").contains("unsupported scheme `ftp`"));
    assert!(message("http[1]").contains("not a URL"));
    assert!(message("http[2]").contains("no query"));
    assert!(message("http[3]").contains("no fragment"));
    assert!(message("http[4]").contains("port 0"));
    // `http://h/` is `http://h` again.
    assert!(message("http[6]").contains("granted twice"));
    assert!(message("tcp[0]").contains("has no port"));
    assert!(message("tcp[1]").contains("port 0"));
    assert!(message("tcp[2]").contains("not a port number"));
    assert!(message("directory").contains("is empty"));
}

#[test]
fn grants_of_the_wrong_type_or_kind_are_reported() {
    let problems = problems(&with_grants(
        r#"grants = { http = "http://h", tcp = [6379], directory = ["a"], files = ["x"] }"#,
    ));
    let g = "pipelines[0].writers[0].grants";
    assert!(
        at(&problems, &format!("{g}.http"))
            .message
            .contains("a list of base URLs")
    );
    assert!(
        at(&problems, &format!("{g}.tcp"))
            .message
            .contains("a list of host:port")
    );
    assert!(
        at(&problems, &format!("{g}.directory"))
            .message
            .contains("a folder path")
    );
    let unknown = &at(&problems, &format!("{g}.files")).message;
    assert!(
        unknown.contains("unknown key `files`")
            && unknown.contains("postgres, http, tcp, directory"),
        "{unknown}"
    );
}

#[test]
fn call_deadline_and_store_call_timeout_are_read_and_range_checked() {
    let config = parse(
        &(MINIMAL.to_string()
            + "\n[daemon]\nplugin_call_deadline = \"90s\"\nstore_call_timeout = \"2m\"\n"),
    )
    .unwrap();
    assert_eq!(config.daemon.plugin_call_deadline, Duration::from_secs(90));
    assert_eq!(config.daemon.store_call_timeout, Duration::from_secs(120));

    let problems = problems(
        &(MINIMAL.to_string()
            + "\n[daemon]\nplugin_call_deadline = \"2h\"\nstore_call_timeout = 300\n"),
    );
    assert_eq!(
        paths(&problems),
        ["daemon.plugin_call_deadline", "daemon.store_call_timeout"],
        "{problems:#?}"
    );
    assert!(
        problems[0]
            .message
            .contains("out of range; expected from 10ms to 1h"),
        "{problems:#?}"
    );
    assert!(
        problems[1].message.contains("found the integer 300"),
        "{problems:#?}"
    );
}

#[test]
fn trusted_keys_are_read_relative_to_the_config_and_broken_ones_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let id = crate::signing::keygen(&dir.join("keys/ci.key"), &dir.join("keys/ci.pub")).unwrap();
    std::fs::write(
        dir.join("keys/broken.pub"),
        "untrusted comment: x\nnot a key\n",
    )
    .unwrap();
    let load = |keys: &str| {
        let text = format!("{MINIMAL}\n[daemon]\ntrusted_keys = {keys}\n");
        Config::from_str_with_env(&text, &dir.join("config.toml"), |_| None)
    };

    let config = load(r#"["keys/ci.pub"]"#).unwrap();
    let keys = config.daemon.trusted_keys.expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(
        keys[0].path,
        std::path::absolute(dir).unwrap().join("keys/ci.pub")
    );
    assert_eq!(keys[0].id, id);

    let problems = load(r#"["keys/ci.pub", "keys/missing.pub", "keys/broken.pub", ""]"#)
        .unwrap_err()
        .problems;
    assert_eq!(
        paths(&problems),
        [
            "daemon.trusted_keys[1]",
            "daemon.trusted_keys[2]",
            "daemon.trusted_keys[3]"
        ],
        "{problems:#?}"
    );
    assert!(
        problems[0]
            .message
            .contains("keys/missing.pub: cannot read it: ")
            && problems[0].message.contains("No such file"),
        "{problems:#?}"
    );
    assert!(
        problems[1]
            .message
            .contains("keys/broken.pub: not a minisign public key"),
        "{problems:#?}"
    );

    let problems = load("[]").unwrap_err().problems;
    assert_eq!(paths(&problems), ["daemon.trusted_keys"]);
    assert!(problems[0].message.contains("is empty"), "{problems:#?}");
    let problems = load(r#""keys/ci.pub""#).unwrap_err().problems;
    assert!(
        problems[0]
            .message
            .contains("expected a list of public key files"),
        "{problems:#?}"
    );
}

#[test]
fn plugins_are_pinned_by_full_sha256_and_trusted_signer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let id = crate::signing::keygen(&dir.join("ci.key"), &dir.join("ci.pub")).unwrap();
    let hash = "0123456789abcdef".repeat(4);
    // `writer` is added to the writer table, `daemon` is the [daemon] table's.
    let load = |source_pin: &str, writer: &str, daemon: &str| {
        let text = MINIMAL.replace(
            "source = { plugin = \"json-source\" }",
            &format!("source = {{ plugin = \"json-source\"{source_pin} }}"),
        );
        let text = format!("{text}{writer}\n[daemon]\n{daemon}\n");
        Config::from_str_with_env(&text, &dir.join("config.toml"), |_| None)
    };
    let keys = "trusted_keys = [\"ci.pub\"]";

    // Unpinned by default.
    let config = load("", "", "").unwrap();
    assert!(config.pipelines[0].source.pin.is_empty());
    assert!(config.pipelines[0].writers[0].pin.is_empty());

    // By hash (either case) and by signer (key id in either case, or file name).
    let upper = hash.to_uppercase();
    let config = load(
        &format!(", sha256 = \"{upper}\""),
        &format!(
            "sha256 = \"{hash}\"\nsigner = \"{}\"\n",
            id.to_string().to_lowercase()
        ),
        keys,
    )
    .unwrap();
    assert_eq!(
        config.pipelines[0].source.pin.sha256.as_deref(),
        Some(hash.as_str())
    );
    let writer = &config.pipelines[0].writers[0].pin;
    assert_eq!(writer.sha256.as_deref(), Some(hash.as_str()));
    let signer = writer.signer.as_ref().expect("a signer pin");
    assert_eq!((signer.key_id, signer.key_file.as_str()), (id, "ci.pub"));
    let config = load(", signer = \"ci.pub\"", "", keys).unwrap();
    assert_eq!(
        config.pipelines[0]
            .source
            .pin
            .signer
            .as_ref()
            .map(|s| s.key_id),
        Some(id)
    );

    // A prefix, something else, a key that is not trusted, a signer without
    // trusted keys: each at its key path.
    let problems = load(
        ", sha256 = \"0123456789ab\"",
        "sha256 = 42\nsigner = \"other.pub\"\n",
        keys,
    )
    .unwrap_err()
    .problems;
    assert_eq!(
        paths(&problems),
        [
            "pipelines[0].source.sha256",
            "pipelines[0].writers[0].sha256",
            "pipelines[0].writers[0].signer"
        ],
        "{problems:#?}"
    );
    assert!(problems[0].message.contains("a prefix"), "{problems:#?}");
    assert!(
        problems[1].message.contains("found the integer 42"),
        "{problems:#?}"
    );
    assert!(
        problems[2]
            .message
            .contains("is not one of daemon.trusted_keys")
            && problems[2].message.contains(&format!("ci.pub ({id})")),
        "{problems:#?}"
    );
    let problems = load("", "signer = \"ci.pub\"\n", "").unwrap_err().problems;
    assert_eq!(paths(&problems), ["pipelines[0].writers[0].signer"]);
    assert!(
        problems[0].message.contains("needs daemon.trusted_keys"),
        "{problems:#?}"
    );
    // A broken trusted_keys is reported once, not again at every signer pin.
    let problems = load(
        "",
        "signer = \"ci.pub\"\n",
        "trusted_keys = [\"missing.pub\"]",
    )
    .unwrap_err()
    .problems;
    assert_eq!(
        paths(&problems),
        ["daemon.trusted_keys[0]"],
        "{problems:#?}"
    );
}

#[test]
fn a_pin_is_a_setting_of_its_pipeline() {
    // The daemon restarts a pipeline whose settings changed: a pin must be
    // part of them.
    let pinned = MINIMAL.replace(
        "source = { plugin = \"json-source\" }",
        &format!(
            "source = {{ plugin = \"json-source\", sha256 = \"{}\" }}",
            "ab".repeat(32)
        ),
    );
    let a = parse(MINIMAL).unwrap();
    let b = parse(&pinned).unwrap();
    assert_ne!(a.pipelines[0], b.pipelines[0]);
}

#[test]
fn amqp_tls_settings_are_checked_at_load_with_their_key_paths() {
    let text = MINIMAL.replace(
        "url = \"amqp://guest@127.0.0.1:5672/%2f\"\n",
        "url = \"amqp://guest@127.0.0.1:5672/%2f\"\ntls = { ca_file = \"/nonexistent/ca.pem\", cert_file = \"client.pem\", kee_file = \"k\" }\n",
    );
    let found = problems(&text);
    assert_eq!(
        at(&found, "connections.rabbit.tls").message,
        "TLS settings on an `amqp://` URL, which connects without TLS; use `amqps://` (port 5671 by default) or remove `tls`"
    );
    assert!(
        at(&found, "connections.rabbit.tls.kee_file")
            .message
            .contains("(did you mean `key_file`?); expected one of: ca_file, cert_file, key_file"),
        "{found:#?}"
    );

    // With amqps://, the files are read: relative to the config file's folder.
    let text = MINIMAL.replace(
        "url = \"amqp://guest@127.0.0.1:5672/%2f\"\n",
        "url = \"amqps://guest@127.0.0.1:5671/%2f\"\ntls = { ca_file = \"/nonexistent/ca.pem\", cert_file = \"client.pem\" }\n",
    );
    let found = problems(&text);
    assert_eq!(
        paths(&found),
        [
            "connections.rabbit.tls.ca_file",
            "connections.rabbit.tls.cert_file"
        ],
        "{found:#?}"
    );
    assert!(
        found[0]
            .message
            .starts_with("cannot read /nonexistent/ca.pem: "),
        "{found:#?}"
    );
    assert_eq!(
        found[1].message,
        "is set but `key_file` is not; a client certificate needs both its certificate and its private key"
    );

    let text = MINIMAL.replace(
        "url = \"amqp://guest@127.0.0.1:5672/%2f\"\n",
        "url = \"amqps://guest@127.0.0.1:5671/%2f\"\ntls = { ca_file = \"\", key_file = 3 }\n",
    );
    let found = problems(&text);
    assert_eq!(
        paths(&found),
        [
            "connections.rabbit.tls.ca_file",
            "connections.rabbit.tls.key_file"
        ],
        "{found:#?}"
    );

    let text = MINIMAL.replace(
        "url = \"postgres://postgres@127.0.0.1:5432/postgres\"\n",
        "url = \"postgres://postgres@127.0.0.1:5432/postgres\"\ntls = { ca_file = \"ca.pem\" }\n",
    );
    assert!(
        at(&problems(&text), "connections.warehouse.tls")
            .message
            .contains("is for amqp connections")
    );
}

#[test]
fn amqp_tls_files_are_read_relative_to_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The snakeoil certificate stands for a CA: any readable certificate does.
    std::fs::copy("/etc/ssl/certs/ssl-cert-snakeoil.pem", dir.join("ca.pem")).unwrap();
    let text = MINIMAL.replace(
        "url = \"amqp://guest@127.0.0.1:5672/%2f\"\n",
        "url = \"amqps://guest@127.0.0.1:5671/%2f\"\ntls = { ca_file = \"ca.pem\" }\n",
    );
    let config = Config::from_str_with_env(&text, &dir.join("config.toml"), |_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let tls = config.pipelines[0].amqp_tls.as_ref().expect("tls");
    assert!(tls.lapin_config().cert_chain.is_some());
    assert!(format!("{tls:?}").contains(&dir.join("ca.pem").display().to_string()));
}

/// MINIMAL with a stream pipeline: `queue` is the inline table given.
fn with_stream_queue(queue: &str) -> String {
    let text = MINIMAL.replace(
        r#"queue = { name = "cdr", bindings = [{ exchange = "cdr", routing_key = "cdr.#" }] }"#,
        &format!("queue = {queue}"),
    );
    format!(
        "{text}\n[connections.streams]\ntype = \"rabbitmq-stream\"\nurl = \"rabbitmq-stream://sluice:secret@rabbit.internal:5553/cdr%2Fvh\"\n"
    )
}

#[test]
fn a_stream_pipeline_reads_its_assigned_partitions_through_a_stream_connection() {
    let config = parse_with(
        &with_stream_queue(
            r#"{ type = "stream", name = "cdr", connection = "streams", partitions = 4, assigned = [1, 3], start = "next", max_age = "7days", max_length = "20GB", max_segment_size = "100MiB" }"#,
        ),
        &[],
    )
    .unwrap();
    let queue = &config.pipelines[0].queue;
    assert_eq!(queue.kind, QueueKind::Stream);
    let stream = queue.stream.as_ref().unwrap();
    assert_eq!(stream.streams, ["cdr-1", "cdr-3"]);
    assert_eq!(stream.consumer_name, "sluice-cdr");
    assert_eq!(stream.start, StreamStart::Next);
    assert_eq!(stream.endpoints[0].host, "rabbit.internal");
    assert_eq!(stream.endpoints[0].port, 5553);
    assert_eq!(stream.endpoints[0].user, "sluice");
    assert_eq!(stream.endpoints[0].password, "secret");
    assert_eq!(stream.endpoints[0].vhost, "cdr/vh");
    assert_eq!(
        stream.retention,
        StreamRetention {
            max_length_bytes: Some(20_000_000_000),
            max_age: Some(Duration::from_secs(7 * 86_400)),
            max_segment_size_bytes: Some(100 << 20),
        }
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("secret"), "{debug}");
}

#[test]
fn a_single_stream_starts_first_by_default_and_a_password_comes_from_the_environment() {
    let text = with_stream_queue(
        r#"{ type = "stream", name = "cdr", connection = "streams", start = "2026-12-01T00:00:00Z" }"#,
    ) + "password_env = \"STREAM_PW\"\n";
    let config = parse_with(&text, &[("STREAM_PW", "from-env")]).unwrap();
    let stream = config.pipelines[0].queue.stream.as_ref().unwrap();
    assert_eq!(stream.streams, ["cdr"]);
    assert_eq!(stream.start, StreamStart::Timestamp(1_796_083_200_000));
    assert_eq!(stream.endpoints[0].password, "from-env");
}

#[test]
fn stream_settings_are_checked_with_their_key_paths() {
    let found = problems(&with_stream_queue(
        r#"{ type = "stream", name = "cdr", connection = "rabbit", partitions = 2, assigned = [0, 2, 0], start = "yesterday", max_length = "lots", delivery_limit = 5 }"#,
    ));
    assert!(
        at(&found, "pipelines[0].queue.connection")
            .message
            .contains("is of type amqp; a stream is read through a rabbitmq-stream connection"),
        "{found:?}"
    );
    let assigned: Vec<&str> = found
        .iter()
        .filter(|p| p.path == "pipelines[0].queue.assigned")
        .map(|p| p.message.as_str())
        .collect();
    assert!(
        assigned
            .iter()
            .any(|m| m.contains("partition 2 does not exist")),
        "{assigned:?}"
    );
    assert!(
        assigned
            .iter()
            .any(|m| m.contains("partition 0 is listed twice")),
        "{assigned:?}"
    );
    assert!(
        at(&found, "pipelines[0].queue.start")
            .message
            .contains("\"yesterday\"")
    );
    assert!(
        at(&found, "pipelines[0].queue.max_length")
            .message
            .contains("\"lots\" is not a size")
    );
    assert!(
        at(&found, "pipelines[0].queue.delivery_limit")
            .message
            .contains("stream")
    );

    let found = problems(&with_stream_queue(r#"{ name = "cdr", partitions = 2 }"#));
    assert!(
        at(&found, "pipelines[0].queue.partitions")
            .message
            .contains("applies only to streams"),
        "{found:?}"
    );
    let found = problems(
        &with_stream_queue(r#"{ type = "stream", name = "cdr", connection = "streams" }"#).replace(
            "connection = \"rabbit\"\n",
            "connection = \"rabbit\"\nconsumers = 4\n",
        ),
    );
    assert!(
        at(&found, "pipelines[0].consumers")
            .message
            .contains("one consumer per stream")
    );
    let found = problems(
        &with_stream_queue(r#"{ type = "stream", name = "cdr", connection = "streams" }"#).replace(
            "rabbitmq-stream://sluice:secret@rabbit.internal:5553/cdr%2Fvh",
            "amqp://rabbit.internal:5552",
        ),
    );
    assert!(
        at(&found, "connections.streams.url")
            .message
            .contains("the scheme is `amqp`"),
        "{found:?}"
    );
}

#[test]
fn byte_sizes_take_decimal_and_binary_units() {
    use super::validate::parse_byte_size;
    assert_eq!(parse_byte_size("20GB"), Some(20_000_000_000));
    assert_eq!(parse_byte_size("500 MiB"), Some(500 << 20));
    assert_eq!(parse_byte_size("1000"), Some(1000));
    assert_eq!(parse_byte_size("0"), None);
    assert_eq!(parse_byte_size("5 parsecs"), None);
}

#[test]
fn a_cluster_connection_lists_its_nodes_each_with_the_password_applied() {
    let text = MINIMAL.replace(
        "url = \"amqp://guest@127.0.0.1:5672/%2f\"",
        "urls = [\"amqp://sluice@rabbit-1:5672/%2f\", \"amqp://sluice@rabbit-2:5672/%2f\", \"amqp://sluice@rabbit-3:5672/%2f\"]\npassword_env = \"RABBIT_PW\"",
    );
    let text = with_stream_queue_urls(
        &text,
        "urls = [\"rabbitmq-stream://sluice@rabbit-1:5552/\", \"rabbitmq-stream://sluice@rabbit-2:5552/\"]",
    );
    let config = parse_with(&text, &[("RABBIT_PW", "pw")]).unwrap();
    let p = &config.pipelines[0];
    assert_eq!(
        p.amqp_urls,
        [
            "amqp://sluice:pw@rabbit-1:5672/%2f",
            "amqp://sluice:pw@rabbit-2:5672/%2f",
            "amqp://sluice:pw@rabbit-3:5672/%2f"
        ]
    );
    assert_eq!(
        p.amqp_url_redacted(2),
        "amqp://sluice:***@rabbit-3:5672/%2f"
    );
    let hosts: Vec<&str> = p
        .queue
        .stream
        .as_ref()
        .unwrap()
        .endpoints
        .iter()
        .map(|e| e.host.as_str())
        .collect();
    assert_eq!(hosts, ["rabbit-1", "rabbit-2"]);
    assert!(!format!("{config:?}").contains(":pw@"));
}

/// The stream pipeline of [`with_stream_queue`] on `text`, its connection
/// given by `url_line`.
fn with_stream_queue_urls(text: &str, url_line: &str) -> String {
    let text = text.replace(
        r#"queue = { name = "cdr", bindings = [{ exchange = "cdr", routing_key = "cdr.#" }] }"#,
        r#"queue = { type = "stream", name = "cdr", connection = "streams" }"#,
    );
    format!("{text}\n[connections.streams]\ntype = \"rabbitmq-stream\"\n{url_line}\n")
}

#[test]
fn a_cluster_connections_urls_are_checked_each_at_its_own_path() {
    let text = MINIMAL
        .replace(
            "url = \"amqp://guest@127.0.0.1:5672/%2f\"",
            "urls = [\"amqp://rabbit-1/%2f\", \"http://rabbit-2/\", \"amqp://rabbit-1/%2f\", \"\"]",
        )
        .replace(
            "url = \"postgres://postgres@127.0.0.1:5432/postgres\"",
            "urls = [\"postgres://a/db\", \"postgres://b/db\"]",
        );
    let text = with_stream_queue_urls(
        &text,
        "url = \"rabbitmq-stream://rabbit-1/\"\nurls = [\"rabbitmq-stream://rabbit-1/\"]",
    )
    .replace(
        "[connections.streams]",
        "[connections.empty]\ntype = \"amqp\"\nurls = []\n\n[connections.streams]",
    );
    let found = problems(&text);
    assert!(
        at(&found, "connections.rabbit.urls[1]")
            .message
            .contains("invalid AMQP URL"),
        "{found:?}"
    );
    assert_eq!(
        at(&found, "connections.rabbit.urls[2]").message,
        "repeats connections.rabbit.urls[0]"
    );
    assert!(
        at(&found, "connections.rabbit.urls[3]")
            .message
            .starts_with("is empty")
    );
    assert!(
        at(&found, "connections.warehouse.urls")
            .message
            .contains("a postgres connection takes one `url`")
    );
    assert!(
        at(&found, "connections.streams.urls")
            .message
            .contains("give one")
    );
    assert!(
        at(&found, "connections.empty.urls")
            .message
            .starts_with("is empty")
    );
}
