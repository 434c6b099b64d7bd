//! `sluice top`: a live view of a running daemon in the terminal, from its
//! admin server's `GET /status` ([`crate::admin::Status`]).
//!
//! One line per pipeline (messages/s in, rows/s written, dead letters/s and in
//! all, mean batch latency, messages in hand, queue depth, state), and below,
//! the selected pipeline in detail: each writer's rows/s, dead letters by
//! stage, retries, and each consumer's session, stall and retry state and the
//! plugin versions it runs since when. Rates are the difference of two answers
//! over the time between them, refreshed every second.
//!
//! `--once` prints the same as plain text (two answers a second apart, for the
//! rates) and exits, for scripts and for terminals that are not terminals.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Wrap};

use crate::admin::{PipelineStatus, Status};
use crate::config::Config;

/// How often the view is refreshed, and how far apart `--once`'s two answers are.
const REFRESH: Duration = Duration::from_secs(1);

/// How long the admin server gets to answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns after the pipeline's name, with their widths.
const COLUMNS: [(&str, usize); 8] = [
    ("IN/s", 8),
    ("ROWS/s", 8),
    ("DEAD/s", 6),
    ("DEAD", 6),
    ("LAT ms", 6),
    ("UNACKED", 7),
    ("QUEUE", 7),
    ("STATE", 9),
];

/// The admin address to read: `admin` if given, else the configuration's
/// `daemon.admin_addr` (a wildcard address is read on loopback).
pub fn admin_addr(admin: Option<&str>, config: &Path) -> anyhow::Result<String> {
    if let Some(admin) = admin {
        return Ok(admin.to_owned());
    }
    let loaded = Config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(mut addr) = loaded.daemon.admin_addr else {
        bail!(
            "{}: no daemon.admin_addr, so there is no admin server to read: set it, or pass --admin ADDR",
            config.display()
        );
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(addr.to_string())
}

/// `GET http://ADDR/status`, read into a [`Status`].
pub fn fetch_status(addr: &str) -> anyhow::Result<Status> {
    let url = format!("http://{addr}/status");
    let body = http_get(addr, "/status").with_context(|| format!("reading {url}"))?;
    serde_json::from_slice(&body)
        .with_context(|| format!("reading {url}: the answer is not a Sluice status"))
}

fn http_get(addr: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let target = addr
        .to_socket_addrs()
        .with_context(|| format!("`{addr}` is not an address (host:port)"))?
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, HTTP_TIMEOUT)
        .context("is the daemon running, with this admin_addr?")?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the answer is not HTTP")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = raw[split + 4..].to_vec();
    let code = head.split(' ').nth(1).unwrap_or("");
    match code {
        "200" => Ok(body),
        "404" => bail!("the daemon has no {path} (a Sluice older than this one?)"),
        _ => bail!(
            "answered {}: {}",
            head.lines().next().unwrap_or(""),
            String::from_utf8_lossy(&body).trim()
        ),
    }
}

/// The order of the pipelines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    /// By name.
    Name,
    /// Busiest first (messages/s in).
    In,
    /// Most dead letters/s first.
    Dead,
    /// Deepest queue first.
    Queue,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Name => Sort::In,
            Sort::In => Sort::Dead,
            Sort::Dead => Sort::Queue,
            Sort::Queue => Sort::Name,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Sort::Name => "name",
            Sort::In => "in/s",
            Sort::Dead => "dead/s",
            Sort::Queue => "queue",
        }
    }
}

/// One pipeline, as shown: its status now and the rates since the answer
/// before.
#[derive(Clone, Debug)]
pub struct PipelineView {
    /// Its status now.
    pub status: PipelineStatus,
    /// Messages received per second (`None` without an answer before).
    pub in_rate: Option<f64>,
    /// Rows written per second, by writer.
    pub rows_rate: Vec<(String, Option<f64>)>,
    /// Dead letters per second, by stage.
    pub dead_rate: Vec<(String, Option<f64>)>,
    /// Mean batch latency over the interval, in milliseconds (`None` without
    /// batches in it).
    pub latency_ms: Option<f64>,
}

impl PipelineView {
    fn rows_per_s(&self) -> Option<f64> {
        sum_rates(&self.rows_rate)
    }

    fn dead_per_s(&self) -> Option<f64> {
        sum_rates(&self.dead_rate)
    }

    fn dead_total(&self) -> u64 {
        self.status.dead_lettered.values().sum()
    }

    /// `paused`, `stalled`, `down` (a consumer without its session),
    /// `draining`, or `ok`.
    fn state(&self, draining: bool) -> &'static str {
        let consumers = &self.status.consumers;
        if self.status.paused.is_some() {
            "paused"
        } else if draining {
            "draining"
        } else if consumers.iter().any(|c| c.stalled.is_some()) {
            "stalled"
        } else if consumers.iter().any(|c| !c.connected) {
            "down"
        } else {
            "ok"
        }
    }

    fn cells(&self, draining: bool) -> [String; 8] {
        [
            rate(self.in_rate),
            rate(self.rows_per_s()),
            rate(self.dead_per_s()),
            self.dead_total().to_string(),
            self.latency_ms.map_or("-".into(), |ms| format!("{ms:.1}")),
            self.status.unacked.to_string(),
            self.status
                .queue_ready
                .map_or("-".into(), |q| q.to_string()),
            self.state(draining).to_owned(),
        ]
    }
}

fn sum_rates(rates: &[(String, Option<f64>)]) -> Option<f64> {
    rates.iter().map(|(_, r)| *r).sum()
}

fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 10_000.0 => format!("{:.1}k", r / 1000.0),
        Some(r) => format!("{r:.1}"),
    }
}

/// Every pipeline of `now`, with rates from `before` (an earlier answer of the
/// same daemon), sorted by `sort`.
pub fn views(before: Option<&Status>, now: &Status, sort: Sort) -> Vec<PipelineView> {
    let dt = before
        .map(|b| now.time_unix - b.time_unix)
        .filter(|dt| *dt > 0.0);
    let mut views: Vec<PipelineView> = now
        .pipelines
        .iter()
        .map(|p| {
            let old = before.and_then(|b| b.pipelines.iter().find(|o| o.name == p.name));
            let per_s = |new: u64, old: Option<u64>| match (dt, old) {
                (Some(dt), Some(old)) => Some(new.saturating_sub(old) as f64 / dt),
                _ => None,
            };
            let by_key = |new: &BTreeMap<String, u64>,
                          old: Option<&BTreeMap<String, u64>>|
             -> Vec<(String, Option<f64>)> {
                new.iter()
                    .map(|(k, v)| {
                        // A writer first seen now started from zero.
                        let before = old.map(|o| o.get(k).copied().unwrap_or(0));
                        (k.clone(), per_s(*v, before))
                    })
                    .collect()
            };
            let latency_ms = old.and_then(|o| {
                let batches = p.batches.checked_sub(o.batches)?;
                (batches > 0)
                    .then(|| (p.batch_seconds_sum - o.batch_seconds_sum) / batches as f64 * 1e3)
            });
            PipelineView {
                in_rate: per_s(p.messages_received, old.map(|o| o.messages_received)),
                rows_rate: by_key(&p.rows_written, old.map(|o| &o.rows_written)),
                dead_rate: by_key(&p.dead_lettered, old.map(|o| &o.dead_lettered)),
                latency_ms,
                status: p.clone(),
            }
        })
        .collect();
    let key = |r: Option<f64>| -r.unwrap_or(0.0);
    match sort {
        Sort::Name => views.sort_by(|a, b| a.status.name.cmp(&b.status.name)),
        Sort::In => views.sort_by(|a, b| key(a.in_rate).total_cmp(&key(b.in_rate))),
        Sort::Dead => views.sort_by(|a, b| key(a.dead_per_s()).total_cmp(&key(b.dead_per_s()))),
        Sort::Queue => views.sort_by_key(|v| std::cmp::Reverse(v.status.queue_ready)),
    }
    views
}

/// The first line: which daemon, how long up, ready or why not.
fn headline(addr: &str, status: &Status) -> String {
    let up = humantime::format_duration(Duration::from_secs(status.uptime_seconds as u64));
    let ready = if status.ready {
        "ready".to_owned()
    } else {
        format!("NOT READY ({} reasons)", status.not_ready.len())
    };
    format!("sluice {} at {addr}, up {up}, {ready}", status.version)
}

/// The detail of one pipeline, one line each: writers, dead letters, retries,
/// consumers and their plugins.
fn detail(view: &PipelineView) -> Vec<String> {
    let p = &view.status;
    let mut lines = Vec::new();
    if let Some(why) = &p.paused {
        lines.push(format!("{}: paused: {why}", p.name));
        return lines;
    }
    lines.push(format!(
        "{}: {} consumer(s), {} received, {} acked, {} batches",
        p.name,
        p.consumers.len(),
        p.messages_received,
        p.messages_acked,
        p.batches
    ));
    for (writer, r) in &view.rows_rate {
        lines.push(format!(
            "  writer {writer}: {} rows/s, {} rows written, {} rejected",
            rate(*r),
            p.rows_written.get(writer).copied().unwrap_or(0),
            p.rows_rejected.get(writer).copied().unwrap_or(0)
        ));
    }
    let dead: Vec<String> = view
        .dead_rate
        .iter()
        .map(|(stage, r)| {
            let n = p.dead_lettered.get(stage).copied().unwrap_or(0);
            format!("{stage} {n} ({}/s)", rate(*r))
        })
        .collect();
    let retries: Vec<String> = p.retries.iter().map(|(s, n)| format!("{s} {n}")).collect();
    lines.push(format!(
        "  dead letters: {}; retries: {}",
        dead.join(", "),
        retries.join(", ")
    ));
    for c in &p.consumers {
        let session = if c.connected {
            "connected".to_owned()
        } else {
            format!(
                "DOWN: {}",
                c.last_error.as_deref().unwrap_or("not consuming yet")
            )
        };
        lines.push(format!(
            "  consumer {}: {session}, {} unacked",
            c.index, c.unacked
        ));
        if let Some(s) = &c.stalled {
            let retry = s
                .retry_in_seconds
                .map_or(String::new(), |r| format!(", next try in {r:.1}s"));
            lines.push(format!(
                "    STALLED {:.0}s, {} tries{retry}: {}",
                s.seconds, s.attempts, s.reason
            ));
        }
        if !c.plugins.is_empty() {
            let plugins: Vec<String> = c
                .plugins
                .iter()
                .map(|pl| {
                    format!(
                        "{} {} {} ({})",
                        pl.role,
                        pl.name,
                        pl.version,
                        &pl.sha256[..pl.sha256.len().min(12)]
                    )
                })
                .collect();
            let since = c.plugins_since_unix.map_or(String::new(), |t| {
                let at = UNIX_EPOCH + Duration::try_from_secs_f64(t).unwrap_or_default();
                let ago = SystemTime::now()
                    .duration_since(at)
                    .map_or(0, |d| d.as_secs());
                format!(
                    " since {} ({} ago)",
                    humantime::format_rfc3339_seconds(at),
                    humantime::format_duration(Duration::from_secs(ago))
                )
            });
            lines.push(format!("    plugins{since}: {}", plugins.join(", ")));
        }
    }
    lines
}

/// `--once`'s text: the headline, the table, then every pipeline in detail.
pub fn render_text(addr: &str, before: Option<&Status>, now: &Status) -> String {
    let views = views(before, now, Sort::Name);
    let name_width = views
        .iter()
        .map(|v| v.status.name.len())
        .max()
        .unwrap_or(0)
        .max("PIPELINE".len());
    let mut out = format!("{}\n", headline(addr, now));
    for reason in &now.not_ready {
        out.push_str(&format!("  not ready: {reason}\n"));
    }
    let mut header = format!("{:<name_width$}", "PIPELINE");
    for (title, width) in COLUMNS {
        if title == "STATE" {
            header.push_str(&format!(" {title}"));
        } else {
            header.push_str(&format!(" {title:>width$}"));
        }
    }
    out.push_str(header.trim_end());
    out.push('\n');
    for v in &views {
        let mut line = format!("{:<name_width$}", v.status.name);
        for (cell, (title, width)) in v.cells(now.draining).iter().zip(COLUMNS) {
            if title == "STATE" {
                line.push_str(&format!(" {cell}"));
            } else {
                line.push_str(&format!(" {cell:>width$}"));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for v in &views {
        out.push('\n');
        for line in detail(v) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Runs `sluice top` against the admin server at `addr`.
pub fn run(addr: &str, once: bool) -> anyhow::Result<ExitCode> {
    if once {
        let first = fetch_status(addr)?;
        std::thread::sleep(REFRESH);
        let second = fetch_status(addr)?;
        print!("{}", render_text(addr, Some(&first), &second));
        return Ok(ExitCode::SUCCESS);
    }
    // Fail before taking over the terminal when nothing answers.
    let first = fetch_status(addr)?;
    let mut app = App {
        addr: addr.to_owned(),
        before: None,
        now: first,
        error: None,
        sort: Sort::Name,
        selected: None,
        quit: false,
    };
    let mut terminal = ratatui::try_init().context("opening the terminal")?;
    let result = app.run(&mut terminal);
    ratatui::restore();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The live view's state.
struct App {
    addr: String,
    before: Option<Status>,
    now: Status,
    /// Why the last refresh failed, if it did (the last answer stays shown).
    error: Option<String>,
    sort: Sort,
    /// The selected pipeline, by name (it keeps its selection when re-sorted).
    selected: Option<String>,
    quit: bool,
}

impl App {
    fn run(&mut self, terminal: &mut ratatui::DefaultTerminal) -> anyhow::Result<()> {
        let mut next = Instant::now() + REFRESH;
        while !self.quit {
            terminal.draw(|frame| self.draw(frame))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(key) = event::read()?
                    && key.kind == KeyEventKind::Press
                {
                    self.key(key.code, key.modifiers);
                }
            } else {
                next = Instant::now() + REFRESH;
                self.refresh();
            }
        }
        Ok(())
    }

    fn refresh(&mut self) {
        match fetch_status(&self.addr) {
            Ok(status) => {
                self.before = Some(std::mem::replace(&mut self.now, status));
                self.error = None;
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    fn key(&mut self, code: KeyCode, modifiers: KeyModifiers) {
        let names: Vec<String> = views(self.before.as_ref(), &self.now, self.sort)
            .into_iter()
            .map(|v| v.status.name)
            .collect();
        let at = self
            .selected
            .as_ref()
            .and_then(|s| names.iter().position(|n| n == s));
        match code {
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => self.quit = true,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Down | KeyCode::Char('j') if !names.is_empty() => {
                let i = at.map_or(0, |i| (i + 1).min(names.len() - 1));
                self.selected = Some(names[i].clone());
            }
            KeyCode::Up | KeyCode::Char('k') if !names.is_empty() => {
                let i = at.map_or(0, |i| i.saturating_sub(1));
                self.selected = Some(names[i].clone());
            }
            _ => {}
        }
    }

    fn draw(&self, frame: &mut Frame) {
        let views = views(self.before.as_ref(), &self.now, self.sort);
        let selected = self
            .selected
            .as_ref()
            .and_then(|s| views.iter().position(|v| &v.status.name == s))
            .or((!views.is_empty()).then_some(0));
        let [head, table_area, detail_area, foot] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(views.len().clamp(1, 12) as u16 + 1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());

        let mut headline = headline(&self.addr, &self.now);
        if let Some(e) = &self.error {
            headline = format!("{headline} | refresh failed: {e}");
        }
        frame.render_widget(
            Paragraph::new(headline).style(Style::new().add_modifier(Modifier::BOLD)),
            head,
        );

        let header = Row::new(
            std::iter::once("PIPELINE")
                .chain(COLUMNS.iter().map(|(t, _)| *t))
                .map(Cell::from),
        )
        .style(Style::new().add_modifier(Modifier::REVERSED));
        let rows = views.iter().map(|v| {
            Row::new(
                std::iter::once(v.status.name.clone())
                    .chain(v.cells(self.now.draining))
                    .map(Cell::from),
            )
        });
        let widths = std::iter::once(Constraint::Min(10))
            .chain(COLUMNS.iter().map(|(_, w)| Constraint::Length(*w as u16)));
        let table = Table::new(rows, widths)
            .header(header)
            .column_spacing(1)
            .row_highlight_style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
        let mut state = TableState::default().with_selected(selected);
        frame.render_stateful_widget(table, table_area, &mut state);

        let lines: Vec<Line> = match selected {
            Some(i) => detail(&views[i]).into_iter().map(Line::from).collect(),
            None => vec![Line::from("no pipelines")],
        };
        frame.render_widget(
            Paragraph::new(lines).wrap(Wrap { trim: false }),
            detail_area,
        );
        frame.render_widget(
            Paragraph::new(format!(
                "q quit  s sort (by {})  up/down select a pipeline",
                self.sort.as_str()
            ))
            .style(Style::new().add_modifier(Modifier::REVERSED)),
            foot,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{ConsumerStatus, PluginInUse, Stalled};

    fn pipeline(
        name: &str,
        received: u64,
        dead_write: u64,
        batches: u64,
        secs: f64,
    ) -> PipelineStatus {
        PipelineStatus {
            name: name.into(),
            paused: None,
            messages_received: received,
            messages_acked: received,
            unacked: 7,
            queue_ready: Some(1200),
            dead_lettered: BTreeMap::from([("decode".into(), 0), ("write".into(), dead_write)]),
            retries: BTreeMap::from([("decode".into(), 0), ("write".into(), 3)]),
            rows_written: BTreeMap::from([("postgres-writer@0.1.0".into(), received)]),
            rows_rejected: BTreeMap::new(),
            batches,
            batch_seconds_sum: secs,
            consumers: vec![ConsumerStatus {
                index: 0,
                connected: true,
                unacked: 7,
                last_error: None,
                stalled: Some(Stalled {
                    reason: "write: writing failed: connection refused".into(),
                    seconds: 12.0,
                    attempts: 4,
                    retry_in_seconds: Some(1.5),
                }),
                plugins: vec![PluginInUse {
                    role: "source".into(),
                    name: "json-source".into(),
                    version: "0.1.0".into(),
                    sha256: "0123456789abcdef".repeat(4),
                }],
                plugins_since_unix: Some(1_700_000_000.0),
            }],
        }
    }

    fn status(time: f64, pipelines: Vec<PipelineStatus>) -> Status {
        Status {
            version: "0.1.0".into(),
            uptime_seconds: 3_725.0,
            time_unix: time,
            ready: true,
            not_ready: Vec::new(),
            draining: false,
            pipelines,
        }
    }

    #[test]
    fn reads_the_admin_addr_of_the_config_on_loopback_when_it_is_a_wildcard() {
        let dir = tempfile::tempdir().unwrap();
        let config = |admin: &str| {
            let path = dir.path().join("config.toml");
            std::fs::write(
                &path,
                format!(
                    "[daemon]\nadmin_addr = {admin}\n\n[connections.rabbit]\ntype = \"amqp\"\nurl = \"amqp://guest@127.0.0.1:5672/%2f\"\n\n[[pipelines]]\nname = \"p\"\nconnection = \"rabbit\"\nqueue = {{ name = \"q\" }}\nsource = {{ plugin = \"json-source\" }}\nwriters = [{{ plugin = \"postgres-writer\" }}]\n"
                ),
            )
            .unwrap();
            path
        };
        let path = config("\"0.0.0.0:9555\"");
        assert_eq!(admin_addr(None, &path).unwrap(), "127.0.0.1:9555");
        assert_eq!(admin_addr(Some("10.0.0.7:1"), &path).unwrap(), "10.0.0.7:1");
        let path = config("false");
        let e = admin_addr(None, &path).unwrap_err().to_string();
        assert!(
            e.contains("no daemon.admin_addr") && e.contains("--admin ADDR"),
            "{e}"
        );
    }

    #[test]
    fn rates_are_differences_over_the_time_between_two_answers() {
        let before = status(100.0, vec![pipeline("cdr", 1_000, 2, 10, 1.0)]);
        let now = status(102.0, vec![pipeline("cdr", 3_000, 6, 30, 3.0)]);
        let v = &views(Some(&before), &now, Sort::Name)[0];
        assert_eq!(v.in_rate, Some(1_000.0));
        assert_eq!(v.rows_per_s(), Some(1_000.0));
        assert_eq!(v.dead_per_s(), Some(2.0));
        assert_eq!(v.latency_ms, Some(100.0));
        // Without an answer before, there are no rates.
        let v = &views(None, &now, Sort::Name)[0];
        assert_eq!((v.in_rate, v.latency_ms), (None, None));
    }

    #[test]
    fn sorts_by_name_rate_dead_letters_or_queue() {
        let before = status(
            0.0,
            vec![pipeline("a", 0, 0, 0, 0.0), pipeline("b", 0, 0, 0, 0.0)],
        );
        let now = status(
            1.0,
            vec![pipeline("a", 10, 5, 1, 0.1), pipeline("b", 20, 1, 1, 0.1)],
        );
        let order = |sort| -> Vec<String> {
            views(Some(&before), &now, sort)
                .into_iter()
                .map(|v| v.status.name)
                .collect()
        };
        assert_eq!(order(Sort::Name), ["a", "b"]);
        assert_eq!(order(Sort::In), ["b", "a"]);
        assert_eq!(order(Sort::Dead), ["a", "b"]);
    }

    #[test]
    fn text_fits_80_columns_and_names_stalls_and_plugins() {
        let before = status(100.0, vec![pipeline("cdr", 1_000, 2, 10, 1.0)]);
        let now = status(101.0, vec![pipeline("cdr", 1_500, 4, 20, 2.0)]);
        let text = render_text("127.0.0.1:9464", Some(&before), &now);
        let table: Vec<&str> = text.lines().take(3).collect();
        assert_eq!(
            table,
            [
                "sluice 0.1.0 at 127.0.0.1:9464, up 1h 2m 5s, ready",
                "PIPELINE     IN/s   ROWS/s DEAD/s   DEAD LAT ms UNACKED   QUEUE STATE",
                "cdr         500.0    500.0    2.0      4  100.0       7    1200 stalled",
            ]
        );
        assert!(table.iter().all(|l| l.len() <= 80), "{text}");
        assert!(
            text.contains(
                "  dead letters: decode 0 (0.0/s), write 4 (2.0/s); retries: decode 0, write 3"
            ),
            "{text}"
        );
        assert!(text.contains("    STALLED 12s, 4 tries, next try in 1.5s: write: writing failed: connection refused"), "{text}");
        assert!(
            text.contains("plugins since 2023-11-14T22:13:20Z ("),
            "{text}"
        );
        assert!(
            text.contains("source json-source 0.1.0 (0123456789ab)"),
            "{text}"
        );
    }
}
