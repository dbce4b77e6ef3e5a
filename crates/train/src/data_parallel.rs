//! Running the replicas of a data-parallel run: one thread per device on
//! this node, registered with burn's collective (`burn::collective`), and
//! on several nodes burn's orchestrator plus a small liveness link that
//! turns a dead or silent node into a clear error instead of a hang.
//!
//! ```no_run
//! use genzoo_core::CpuDevice;
//! use genzoo_data::{ImageData, Locator, Scaling, load_image_dataset};
//! use genzoo_models::vae::{VaeConfig, VaeTrainer};
//! use genzoo_train::data_parallel::{ParallelConfig, run_replicas};
//! use genzoo_train::{RunDir, TrainConfig, Trainer};
//! type B = burn::backend::Autodiff<burn::backend::Flex>;
//!
//! let (train, test) = load_image_dataset(&"mnist".parse().unwrap(), &Locator::from_env(None)).unwrap();
//! let data = ImageData::new(train, test, 128, Scaling::Unit, 0).unwrap();
//! let run = RunDir::create("runs/vae-dp", false).unwrap();
//! let config = TrainConfig { epochs: Some(1), ..Default::default() };
//! let parallel = ParallelConfig { devices: 2, ..Default::default() };
//! let devices = vec![CpuDevice::default(); 2];
//! let outcomes = run_replicas::<B, _>(&parallel, devices, |_replica, device| {
//!     let vae = VaeTrainer::<B>::new(VaeConfig::default(), &device);
//!     Trainer::new(run.clone(), config.clone()).fit_replica(vae, &data, &device)
//! })
//! .unwrap();
//! println!("trained {} steps", outcomes[0].step);
//! ```
//!
//! A step on N replicas equals the step one device takes on the whole
//! batch: each replica takes its rows, draws those rows' noise
//! ([`genzoo_core::noise`]), averages gradients before the update and
//! BatchNorm statistics in the forward pass (synchronised BatchNorm).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::collective::{self, AllReduceStrategy, CollectiveConfig};
use burn::tensor::backend::AutodiffBackend;
use burn_communication::Address;
use genzoo_core::error::{panic_message, payload_message};
use genzoo_core::parallel::{self, Replica};
use genzoo_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// How a run spreads over devices and machines (the `[parallel]` section
/// of a config file, and `--devices`, `--nodes`, ... on the command line).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ParallelConfig {
    /// Replicas on this node: GPUs by index, or peers sharing the one CPU device.
    pub devices: usize,
    /// Machines (processes) taking part; each runs `devices` replicas.
    pub nodes: usize,
    /// This node's rank (0 coordinates and writes the run's files).
    pub node_rank: usize,
    /// `HOST:PORT` of node 0, where burn's orchestrator listens on PORT and
    /// genzoo's liveness link on PORT+1; node R serves tensors on PORT+2+R.
    pub coordinator: Option<String>,
    /// The address other nodes reach this node at (default: the
    /// coordinator's host when it is a loopback address, else required).
    pub node_host: Option<String>,
    /// Seconds without any progress (or a node's connection) before the
    /// run stops with an error. Must exceed the leader's longest pause
    /// (evaluation, sample grids).
    pub peer_timeout_s: u64,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        Self {
            devices: 1,
            nodes: 1,
            node_rank: 0,
            coordinator: None,
            node_host: None,
            peer_timeout_s: 600,
        }
    }
}

impl ParallelConfig {
    /// Whether this is a data-parallel run at all (more than one replica).
    pub fn is_parallel(&self) -> bool {
        self.devices * self.nodes > 1
    }

    /// Replicas over all nodes.
    pub fn world(&self) -> usize {
        self.devices * self.nodes
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> Result<()> {
        if self.devices == 0 || self.nodes == 0 {
            return Err(Error::Config("devices and nodes must be at least 1".into()));
        }
        if self.node_rank >= self.nodes {
            return Err(Error::Config(format!(
                "node_rank {} is out of range for {} nodes (0..{})",
                self.node_rank,
                self.nodes,
                self.nodes - 1
            )));
        }
        if self.nodes > 1 {
            self.coordinator_addr()?;
        }
        if self.peer_timeout_s == 0 {
            return Err(Error::Config("peer_timeout_s must be at least 1".into()));
        }
        Ok(())
    }

    /// The coordinator's host and port.
    fn coordinator_addr(&self) -> Result<(String, u16)> {
        let text = self.coordinator.as_deref().ok_or_else(|| {
            Error::Config(format!(
                "{} nodes need --coordinator HOST:PORT (node 0's address)",
                self.nodes
            ))
        })?;
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| Error::Config(format!("--coordinator {text}: expected HOST:PORT")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| Error::Config(format!("--coordinator {text}: bad port '{port}'")))?;
        if port > u16::MAX - 2 - self.nodes as u16 {
            return Err(Error::Config(format!(
                "--coordinator {text}: the port must leave room for PORT+1 and one port per node above it"
            )));
        }
        Ok((host.to_string(), port))
    }

    /// The address other nodes reach this node at.
    fn node_host(&self, coordinator_host: &str) -> Result<String> {
        if let Some(h) = &self.node_host {
            return Ok(h.clone());
        }
        let loopback = coordinator_host == "localhost"
            || coordinator_host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            Ok(coordinator_host.to_string())
        } else {
            Err(Error::Config(
                "--node-host HOST is needed: the address the other nodes reach this node at".into(),
            ))
        }
    }
}

/// One data-parallel run at a time per process: burn's collective has one
/// local server per backend type.
static RUN_LOCK: Mutex<()> = Mutex::new(());

/// Runs `replica(replica, device)` on one thread per device of this node,
/// each registered as a collective peer, and returns their results (local
/// order). The first real failure of any replica (an error or a panic) is
/// the error returned; the other replicas are released from the collective
/// so that they stop instead of waiting for it.
///
/// With several nodes, node 0 also starts burn's orchestrator, and every
/// node watches the others over a liveness link: a node that dies or cannot
/// connect stops the rest within `peer_timeout_s` with an error naming it.
/// A replica stuck inside a collective operation cannot be cancelled in
/// burn 0.21, so when replicas do not return within a grace period after
/// such a failure the process exits (status 3) after printing the error;
/// checkpoints are written atomically, so the last one stays intact.
pub fn run_replicas<B, T>(
    config: &ParallelConfig,
    devices: Vec<B::Device>,
    replica: impl Fn(Replica, B::Device) -> Result<T> + Sync,
) -> Result<Vec<T>>
where
    B: AutodiffBackend,
    T: Send,
{
    config.validate()?;
    if devices.len() != config.devices {
        return Err(Error::Config(format!(
            "{} devices configured but {} given",
            config.devices,
            devices.len()
        )));
    }
    if !parallel::supports_backend::<B>() {
        return Err(Error::Backend(format!(
            "data-parallel training is not available on backend {}",
            std::any::type_name::<B>()
        )));
    }
    let _one_run = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // A previous run that failed may have left peers registered.
    reset::<B>();

    let timeout = Duration::from_secs(config.peer_timeout_s);
    let mut collective_config = CollectiveConfig::default().with_num_devices(config.devices);
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    // The local replica that failed first: its error is the root cause.
    let first_failed: Mutex<Option<usize>> = Mutex::new(None);
    let done = Arc::new(AtomicBool::new(false));
    let mut link = None;
    let mut held_panics = None;
    if config.nodes > 1 {
        quiet_network_logs();
        held_panics = HeldNetworkPanics::hold();
        let (host, port) = config.coordinator_addr()?;
        let node_host = config.node_host(&host)?;
        if config.node_rank == 0 {
            start_orchestrator(port)?;
        }
        let data_port = port + 2 + config.node_rank as u16;
        collective_config = collective_config
            .with_num_nodes(config.nodes as u32)
            .with_global_address(address(&format!("ws://{host}:{port}"))?)
            .with_node_address(address(&format!("ws://{node_host}:{data_port}"))?)
            .with_data_service_port(data_port)
            // burn 0.21's ring all-reduce between nodes stalls after a few
            // operations here (and needs every tensor to have a dimension of
            // at least `nodes`); the centralised one does not.
            .with_global_all_reduce_strategy(AllReduceStrategy::Centralized);
        link = Some(NodeLink::connect(
            config,
            &host,
            port + 1,
            timeout,
            failure.clone(),
            done.clone(),
        )?);
    }

    let world = config.world();
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .into_iter()
            .enumerate()
            .map(|(local, device)| {
                let rank = config.node_rank * config.devices + local;
                let collective_config = collective_config.clone();
                let replica = &replica;
                let failure = failure.clone();
                let first_failed = &first_failed;
                scope.spawn(move || {
                    // Like the CPU pool's threads (small ops run here).
                    genzoo_core::backend::flush_subnormals();
                    let me = Replica::new(rank, world);
                    let result = catch_unwind(AssertUnwindSafe(|| {
                        collective::register::<B::InnerBackend>(
                            me.peer(),
                            device.clone(),
                            collective_config,
                        )
                        .map_err(|e| parallel::collective_error(&me, "registration", e))?;
                        let _guard = parallel::enter(me);
                        let out = replica(me, device)?;
                        collective::finish_collective::<B::InnerBackend>(me.peer())
                            .map_err(|e| parallel::collective_error(&me, "finish", e))?;
                        Ok(out)
                    }))
                    .unwrap_or_else(|panic| {
                        Err(Error::Parallel(format!(
                            "replica {rank} of {world} panicked: {}",
                            panic_message(&panic)
                        )))
                    });
                    if let Err(e) = &result {
                        first_failed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(local);
                        // Release the other replicas waiting in a collective.
                        let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                        if f.is_none() && !is_release(e) {
                            *f = Some(e.to_string());
                        }
                        drop(f);
                        reset::<B>();
                    }
                    result
                })
            })
            .collect();
        if let Some(link) = &link {
            // What burn's network layer said of the failure, before a
            // process stuck in it exits.
            let say_held = || {
                if let Some(held) = &held_panics {
                    held.say_held(false);
                }
            };
            link.watch_while_running(&handles, timeout, || reset::<B>(), say_held);
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Parallel(
                        "a replica thread could not be joined".into(),
                    ))
                })
            })
            .collect()
    });
    done.store(true, Ordering::SeqCst);
    let ok = results.iter().all(|r| r.is_ok());
    if let Some(link) = link {
        link.finish(ok);
    }
    reset::<B>();
    // The network layer's panics held during the run are reported here.
    if let Some(mut held) = held_panics {
        held.run_ok = ok;
    }

    let remote = failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let first_failed = first_failed.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut outputs = Vec::new();
    let mut errors = Vec::new();
    for (local, r) in results.into_iter().enumerate() {
        match r {
            Ok(t) => outputs.push(t),
            Err(e) => errors.push((local, e)),
        }
    }
    if errors.is_empty() {
        return Ok(outputs);
    }
    // The root cause: the replica that failed first, else a failure reported
    // from another node, else any.
    if let Some(i) = errors.iter().position(|(l, _)| Some(*l) == first_failed)
        && !is_release(&errors[i].1)
    {
        return Err(errors.swap_remove(i).1);
    }
    if let Some(reason) = remote {
        return Err(Error::Parallel(reason));
    }
    let i = errors.iter().position(|(_, e)| !is_release(e)).unwrap_or(0);
    Err(errors.swap_remove(i).1)
}

/// Forgets every registered peer and pending operation of this process's
/// collective server, releasing replicas waiting in one. A server that has
/// already stopped (burn's panics inside it) has nothing left to release.
fn reset<B: AutodiffBackend>() {
    let _ = catch_unwind(collective::reset_collective::<B::InnerBackend>);
}

/// Whether `e` only says that this replica was released because another failed.
fn is_release(e: &Error) -> bool {
    e.to_string().contains("the collective was reset")
}

/// The panic hook a [`HeldNetworkPanics`] replaced, called for every other panic.
type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync>;

/// Panics inside burn's network layer (burn-collective, burn-communication)
/// held back during a multi-node run instead of printed as they come: when
/// a node is lost, its peers' WebSocket tasks and collective clients panic
/// one after another (a missing transfer, a closed channel, a broken pipe),
/// five messages with their backtraces before genzoo's own error, which
/// names the node. Dropped, it puts the previous hook back and says what
/// was held. `GENZOO_NETWORK_LOG=1` prints them as they come, as burn's log.
struct HeldNetworkPanics {
    previous: Option<Arc<PanicHook>>,
    held: Arc<Mutex<Vec<String>>>,
    /// Whether the run succeeded (set at its end; an early return failed).
    run_ok: bool,
}

impl HeldNetworkPanics {
    /// Holds the network layer's panics from now on (none: the variable is set).
    fn hold() -> Option<Self> {
        if std::env::var_os("GENZOO_NETWORK_LOG").is_some() {
            return None;
        }
        let previous: Arc<PanicHook> = Arc::new(std::panic::take_hook());
        let held = Arc::new(Mutex::new(Vec::new()));
        let (others, kept) = (previous.clone(), held.clone());
        std::panic::set_hook(Box::new(move |info| {
            let Some(place) = info
                .location()
                .filter(|l| is_network_layer(l.file()))
                .map(|l| format!("{}:{}", l.file(), l.line()))
            else {
                return others(info);
            };
            let message = payload_message(info.payload());
            kept.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("'{message}' at {place}"));
        }));
        Some(Self {
            previous: Some(previous),
            held,
            run_ok: false,
        })
    }
}

impl Drop for HeldNetworkPanics {
    /// Restores the previous hook and prints what was held.
    fn drop(&mut self) {
        drop(std::panic::take_hook()); // with it, the hook's handle on `previous`
        if let Some(previous) = self.previous.take().and_then(|p| Arc::try_unwrap(p).ok()) {
            std::panic::set_hook(previous);
        }
        self.say_held(self.run_ok);
    }
}

impl HeldNetworkPanics {
    /// Prints the panics held so far, and forgets them: a line after a run
    /// that failed (they followed the failure), each panic after one that
    /// did not (then they are a bug worth reporting).
    fn say_held(&self, run_ok: bool) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        match (held.first(), run_ok) {
            (None, _) => {}
            (Some(first), false) => eprintln!(
                "burn's network layer panicked {} time(s) as the run failed, first {first} \
                 (GENZOO_NETWORK_LOG=1 prints each as it comes)",
                held.len()
            ),
            (Some(_), true) => {
                for panic in &held {
                    eprintln!("burn's network layer panicked: {panic}");
                }
            }
        }
    }
}

/// Whether a panic at `file` is in burn's network layer.
fn is_network_layer(file: &str) -> bool {
    ["burn-collective", "burn-communication"]
        .iter()
        .any(|name| file.contains(name))
}

/// burn's WebSocket layer installs an INFO-level log printer on first use
/// unless one exists: install one that prints warnings and errors only
/// (`GENZOO_NETWORK_LOG=1` keeps burn's), in colour on a terminal only, so
/// that a job's log file holds no escape codes.
fn quiet_network_logs() {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::LevelFilter;
    if std::env::var_os("GENZOO_NETWORK_LOG").is_some() {
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_max_level(LevelFilter::WARN)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn address(text: &str) -> Result<Address> {
    Address::from_str(text).map_err(|e| Error::Config(format!("bad address {text}: {e}")))
}

/// Starts burn's orchestrator on `port` in a background thread (node 0).
fn start_orchestrator(port: u16) -> Result<()> {
    // Fail early and clearly when the port is taken.
    TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| Error::Parallel(format!("cannot listen on coordinator port {port}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Parallel(format!("cannot start the orchestrator runtime: {e}")))?;
    std::thread::Builder::new()
        .name("genzoo-orchestrator".into())
        .spawn(move || runtime.block_on(collective::start_global_orchestrator(port)))
        .map_err(|e| Error::Parallel(format!("cannot start the orchestrator: {e}")))?;
    Ok(())
}

/// genzoo's liveness link between nodes: node 0 accepts one TCP connection
/// per other node; each side sends its progress every second and `bye`
/// when it finishes. A connection that closes without `bye` means that
/// node died; a node whose progress and connection stay silent past the
/// timeout is named as stalled. Node 0 relays a failure to every node.
struct NodeLink {
    peers: Vec<(usize, Arc<Mutex<TcpStream>>)>,
    failure: Arc<Mutex<Option<String>>>,
    last_remote_progress: Arc<Mutex<Instant>>,
    node_rank: usize,
}

impl NodeLink {
    fn connect(
        config: &ParallelConfig,
        host: &str,
        port: u16,
        timeout: Duration,
        failure: Arc<Mutex<Option<String>>>,
        done: Arc<AtomicBool>,
    ) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let mut peers = Vec::new();
        if config.node_rank == 0 {
            let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
                Error::Parallel(format!("cannot listen on liveness port {port}: {e}"))
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|e| Error::Parallel(e.to_string()))?;
            let mut missing: Vec<usize> = (1..config.nodes).collect();
            while !missing.is_empty() {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream
                            .set_nonblocking(false)
                            .map_err(|e| Error::Parallel(e.to_string()))?;
                        let mut line = String::new();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(10)))
                            .map_err(|e| Error::Parallel(e.to_string()))?;
                        BufReader::new(&stream)
                            .read_line(&mut line)
                            .map_err(|e| Error::Parallel(format!("liveness hello: {e}")))?;
                        let rank = line
                            .trim()
                            .strip_prefix("hello ")
                            .and_then(|r| r.parse::<usize>().ok())
                            .filter(|r| missing.contains(r))
                            .ok_or_else(|| {
                                Error::Parallel(format!(
                                    "unexpected liveness hello '{}' (two nodes with one rank?)",
                                    line.trim()
                                ))
                            })?;
                        stream
                            .set_read_timeout(None)
                            .map_err(|e| Error::Parallel(e.to_string()))?;
                        missing.retain(|&r| r != rank);
                        peers.push((rank, Arc::new(Mutex::new(stream))));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(Error::Parallel(format!(
                                "node(s) {} did not connect to the coordinator (port {port}) within {} s",
                                list(&missing),
                                timeout.as_secs()
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(Error::Parallel(format!("liveness accept: {e}"))),
                }
            }
        } else {
            let target: SocketAddr = (host, port)
                .to_socket_addrs()
                .map_err(|e| Error::Parallel(format!("coordinator {host}: {e}")))?
                .next()
                .ok_or_else(|| Error::Parallel(format!("coordinator {host}: no address")))?;
            let stream = loop {
                match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(Error::Parallel(format!(
                            "node 0 (the coordinator at {target}) could not be reached within {} s: {e}",
                            timeout.as_secs()
                        )));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            };
            let mut s = &stream;
            writeln!(s, "hello {}", config.node_rank)
                .map_err(|e| Error::Parallel(format!("liveness hello: {e}")))?;
            peers.push((0, Arc::new(Mutex::new(stream))));
        }

        let link = Self {
            peers,
            failure,
            last_remote_progress: Arc::new(Mutex::new(Instant::now())),
            node_rank: config.node_rank,
        };
        link.spawn_readers(done.clone());
        link.spawn_writer(done);
        Ok(link)
    }

    /// One reader per connection: progress, `bye`, `abort`, or a closed
    /// connection (that node died).
    fn spawn_readers(&self, done: Arc<AtomicBool>) {
        for (rank, stream) in &self.peers {
            let rank = *rank;
            let reader = stream
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .try_clone()
                .expect("a cloneable TCP stream");
            let failure = self.failure.clone();
            let progress = self.last_remote_progress.clone();
            let done = done.clone();
            let others: Vec<Arc<Mutex<TcpStream>>> = self
                .peers
                .iter()
                .filter(|(r, _)| *r != rank)
                .map(|(_, s)| s.clone())
                .collect();
            let relay = self.node_rank == 0;
            std::thread::spawn(move || {
                let mut said_bye = false;
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let line = line.trim();
                    if line == "bye" {
                        said_bye = true;
                    } else if line.starts_with("progress") {
                        *progress.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    } else if let Some(reason) = line.strip_prefix("abort ") {
                        set_failure(&failure, reason.to_string());
                    }
                }
                if !said_bye && !done.load(Ordering::SeqCst) {
                    let reason =
                        format!("node {rank} disconnected: its process died or the network failed");
                    if relay {
                        for s in &others {
                            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                            let _ = writeln!(s, "abort {reason}");
                        }
                    }
                    set_failure(&failure, reason);
                }
            });
        }
    }

    /// Sends this node's progress every second, so that the others know it
    /// is alive and working.
    fn spawn_writer(&self, done: Arc<AtomicBool>) {
        let peers: Vec<Arc<Mutex<TcpStream>>> = self.peers.iter().map(|(_, s)| s.clone()).collect();
        std::thread::spawn(move || {
            let mut last = u64::MAX;
            while !done.load(Ordering::SeqCst) {
                let now = parallel::progress();
                if now != last {
                    for s in &peers {
                        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = writeln!(s, "progress {now}");
                    }
                    last = now;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
    }

    /// Waits for the local replicas while watching for a failure elsewhere
    /// (or a stall); on one, releases the replicas and, if they stay stuck
    /// in burn's collective, calls `before_exit` and ends the process with
    /// the error.
    fn watch_while_running<T>(
        &self,
        handles: &[std::thread::ScopedJoinHandle<'_, T>],
        timeout: Duration,
        release: impl Fn(),
        before_exit: impl Fn(),
    ) {
        let mut local_progress = parallel::progress();
        let mut local_at = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            let now = parallel::progress();
            if now != local_progress {
                (local_progress, local_at) = (now, Instant::now());
            }
            let remote_at = *self
                .last_remote_progress
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let silent = local_at.elapsed().min(remote_at.elapsed());
            if silent > timeout {
                let names: Vec<usize> = self.peers.iter().map(|(r, _)| *r).collect();
                set_failure(
                    &self.failure,
                    format!(
                        "no progress for {} s on node {} nor from node(s) {}: a node is stuck",
                        timeout.as_secs(),
                        self.node_rank,
                        list(&names)
                    ),
                );
            }
            let failed = self
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(reason) = failed {
                release();
                let grace = Instant::now();
                while !handles.iter().all(|h| h.is_finished()) {
                    if grace.elapsed() > Duration::from_secs(10) {
                        before_exit();
                        eprintln!(
                            "error: data-parallel training: {reason}; the replicas of node {} stay \
                             blocked in a collective operation, so the process exits (the last \
                             checkpoint is intact)",
                            self.node_rank
                        );
                        std::process::exit(3);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                return;
            }
        }
    }

    /// Says goodbye (or that this node failed) to the other nodes.
    fn finish(self, ok: bool) {
        for (_, s) in &self.peers {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            let _ = if ok {
                writeln!(s, "bye")
            } else {
                writeln!(s, "abort node {} failed", self.node_rank)
            };
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
    }
}

fn set_failure(failure: &Mutex<Option<String>>, reason: String) {
    let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
    if f.is_none() {
        *f = Some(reason);
    }
}

fn list(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
