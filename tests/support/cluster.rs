//! A three-node RabbitMQ cluster on this one machine, beside the machine's own
//! broker on 5672 (which it leaves alone): three [`RabbitNode`]s with their own
//! names, ports (AMQP and stream protocol) and data folders, one Erlang cookie,
//! joined with `rabbitmqctl join_cluster`. Nodes are stopped and started again
//! the way an operator does (`rabbitmqctl stop`, then the server again on the
//! same data), so quorum queues and streams elect new leaders as in production.
//!
//! One cluster serves every test of a process ([`shared`]), one test at a time
//! (three Erlang VMs per test would not fit two cores); a test gets it with its
//! nodes all running, whatever the test before it left. Its nodes run in
//! process groups of their own, killed when the test process exits.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use tokio::sync::{Mutex, MutexGuard};

use crate::daemon::Broker;
use crate::rabbit_node::{NodeOptions, RabbitNode, free_port};
use crate::unique_name;

/// Nodes in the cluster: the fewest for a quorum that survives one loss.
pub const NODES: usize = 3;

/// A running cluster.
pub struct RabbitCluster {
    nodes: Vec<RabbitNode>,
    stream_ports: Vec<u16>,
}

static SHARED: OnceLock<Mutex<RabbitCluster>> = OnceLock::new();

/// The process's cluster, started on first use, every node running; other
/// tests wait while one holds it. For tests on tokio's multi-threaded
/// runtime (starting nodes blocks a thread for seconds).
pub async fn shared() -> MutexGuard<'static, RabbitCluster> {
    let cluster = tokio::task::block_in_place(|| {
        SHARED.get_or_init(|| {
            let cluster = RabbitCluster::start("cluster");
            // SAFETY: registers a plain function without arguments.
            unsafe { libc::atexit(kill_shared) };
            Mutex::new(cluster)
        })
    });
    // A test that failed while holding it left it as it was: usable, once
    // the nodes it stopped run again.
    let mut guard = cluster.lock().await;
    tokio::task::block_in_place(|| guard.start_stopped());
    guard
}

/// At exit: kills the shared cluster's nodes (statics are never dropped).
extern "C" fn kill_shared() {
    let Some(cluster) = SHARED.get() else { return };
    let Ok(cluster) = cluster.try_lock() else {
        return;
    };
    for node in &cluster.nodes {
        if let Some(group) = node.group() {
            // SAFETY: a signal to a process group of our own.
            unsafe { libc::kill(-(group as i32), libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(node.dir());
    }
}

impl RabbitCluster {
    /// Starts three nodes with the stream plugin and joins the second and the
    /// third to the first.
    pub fn start(tag: &str) -> RabbitCluster {
        let cookie = unique_name("cookie");
        let mut nodes = Vec::new();
        let mut stream_ports = Vec::new();
        for i in 0..NODES {
            let port = free_port();
            // Advertised as the clients reach it: the stream protocol tells
            // clients where a stream's leader and replicas are.
            let conf = format!(
                "stream.listeners.tcp.1 = {port}\n\
                 stream.advertised_host = 127.0.0.1\n\
                 stream.advertised_port = {port}\n"
            );
            nodes.push(RabbitNode::start_with(
                &format!("{tag}{i}"),
                NodeOptions {
                    extra_conf: &conf,
                    also_listening: &[port],
                    plugins: &["rabbitmq_stream"],
                    cookie: Some(&cookie),
                    own_group: true,
                },
            ));
            stream_ports.push(port);
        }
        let first = nodes[0].name.clone();
        for (node, port) in nodes.iter_mut().zip(&stream_ports).skip(1) {
            for args in [
                &["stop_app"][..],
                &["join_cluster", &first][..],
                &["start_app"][..],
            ] {
                if let Err(e) = node.ctl(args) {
                    panic!("{} {args:?}: {e}", node.name);
                }
            }
            node.wait_listening(&[node.amqp_port, *port]);
        }
        let cluster = RabbitCluster {
            nodes,
            stream_ports,
        };
        cluster.wait_all_running();
        cluster
    }

    /// `amqp://` URLs of the nodes, in order.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RabbitNode::amqp_url).collect()
    }

    /// `rabbitmq-stream://` URLs of the nodes, in order.
    pub fn stream_urls(&self) -> Vec<String> {
        self.stream_ports
            .iter()
            .map(|port| format!("rabbitmq-stream://guest:guest@127.0.0.1:{port}/%2f"))
            .collect()
    }

    /// The `i`th node's stream-protocol port.
    pub fn stream_port(&self, i: usize) -> u16 {
        self.stream_ports[i]
    }

    /// The `i`th node.
    pub fn node(&self, i: usize) -> &RabbitNode {
        &self.nodes[i]
    }

    /// Stops node `i` as an operator would (`rabbitmqctl stop`).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Kills node `i` (SIGKILL): a crash, with no goodbye to the cluster.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again on its data; it rejoins the cluster.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_all_running();
    }

    /// Starts every stopped node again.
    pub fn start_stopped(&mut self) {
        let stopped: Vec<usize> = (0..NODES).filter(|&i| !self.nodes[i].running()).collect();
        for i in stopped {
            self.restart(i);
        }
    }

    /// A node that runs: to ask the cluster things.
    fn running(&self) -> &RabbitNode {
        // `running` needs `&mut` (it reaps the child): ask each in turn.
        self.nodes
            .iter()
            .find(|node| node.ctl(&["status"]).is_ok())
            .expect("a running node")
    }

    /// `rabbitmqctl list_queues name <columns>`: the columns of queue (or
    /// stream) `name`, `None` while it is not there (or no node answers).
    pub fn queue_info(&self, name: &str, columns: &[&str]) -> Option<Vec<String>> {
        let mut args = vec!["list_queues", "name"];
        args.extend(columns);
        args.extend(["--no-table-headers", "--quiet"]);
        let out = self.running().ctl(&args).ok()?;
        out.lines().find_map(|line| {
            let mut fields = line.split('\t');
            (fields.next()? == name).then(|| fields.map(|f| f.trim().to_string()).collect())
        })
    }

    /// Messages ready and delivered-but-unacked in queue `name` (0, 0 when it
    /// does not exist).
    pub fn depth(&self, name: &str) -> (u64, u64) {
        let info = self.queue_info(name, &["messages_ready", "messages_unacknowledged"]);
        let number = |i: usize| {
            info.as_ref()
                .and_then(|f| f.get(i))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (number(0), number(1))
    }

    /// Whether queue (or stream) `queue` is bound to `exchange`.
    pub fn bound(&self, exchange: &str, queue: &str) -> bool {
        self.running()
            .ctl(&[
                "list_bindings",
                "source_name",
                "destination_name",
                "--no-table-headers",
                "--quiet",
            ])
            .is_ok_and(|out| {
                out.lines()
                    .any(|line| line.split('\t').collect::<Vec<_>>() == [exchange, queue])
            })
    }

    /// Which node leads queue or stream `name` (its index), from
    /// `rabbitmqctl list_queues name leader`; `None` while it has none.
    pub fn leader(&self, name: &str) -> Option<usize> {
        let leader = self.queue_info(name, &["leader"])?.into_iter().next()?;
        self.nodes.iter().position(|node| node.name == leader)
    }

    /// Waits until `name`'s leader is a running node other than `old`: the
    /// cluster elected a new one. Its index.
    pub fn wait_new_leader(&self, name: &str, old: usize) -> usize {
        let started = Instant::now();
        loop {
            if let Some(i) = self.leader(name)
                && i != old
            {
                return i;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no new leader for {name} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every node sees all three running.
    fn wait_all_running(&self) {
        let started = Instant::now();
        loop {
            let all = self.nodes.iter().all(|node| {
                node.ctl(&["cluster_status", "--formatter", "json"])
                    .is_ok_and(|out| {
                        self.nodes.iter().all(|n| {
                            out.split("\"running_nodes\"").nth(1).is_some_and(|rest| {
                                rest.split(']').next().unwrap_or("").contains(&n.name)
                            })
                        })
                    })
            });
            if all {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the cluster's nodes do not all see each other running"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Publishes `bodies` to `exchange` through whichever node answers, in
/// confirmed chunks of `chunk`, pausing `pause` after each (a steady load);
/// a chunk cut by a node that stopped is published again through the next
/// node (rows are keyed on the call id: a message published twice lands once).
pub async fn publish(
    urls: Vec<String>,
    exchange: String,
    bodies: Vec<String>,
    chunk: usize,
    pause: Duration,
) {
    const LONG: Duration = Duration::from_secs(180);
    let mut node = 0;
    let mut broker: Option<Broker> = None;
    for part in bodies.chunks(chunk) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < LONG,
                "no node took a chunk of messages within {LONG:?}"
            );
            if broker.is_none() {
                match Broker::try_connect_to(&urls[node % urls.len()]).await {
                    Ok(b) => broker = Some(b),
                    Err(_) => {
                        node += 1;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            // Collected first: a lazy iterator's closure would keep the
            // future from being `Send` (it is spawned).
            let messages: Vec<(Vec<u8>, BasicProperties)> = part
                .iter()
                .map(|body| {
                    (
                        body.clone().into_bytes(),
                        BasicProperties::default().with_content_type("application/json".into()),
                    )
                })
                .collect();
            let sent = broker
                .as_ref()
                .expect("connected")
                .publish_messages(&exchange, messages);
            match tokio::time::timeout(Duration::from_secs(30), sent).await {
                Ok(Ok(())) => break,
                _ => {
                    broker = None;
                    node += 1;
                }
            }
        }
        tokio::time::sleep(pause).await;
    }
}
