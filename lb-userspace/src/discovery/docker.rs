//! Following one Docker host with bollard: list the labelled containers and inspect them
//! at start-up and after every reconnect (so no target is missed and none left behind),
//! then follow the host's container events (start, die, stop, kill, health_status,
//! destroy, rename) and list again after each burst. While the host cannot be reached, its
//! last known targets are kept; the outage is logged once, and the connection retried
//! with a backoff up to 30 s.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use bollard::{
    API_DEFAULT_VERSION, Docker,
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};

use super::{Found, LABEL_VIP, Skip, target_of};
use crate::config::VipId;

/// How to reach a Docker host's API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///var/run/docker.sock`
    Unix(PathBuf),
    /// `tcp://host:2376` with TLS (CA, client certificate and key).
    Tls {
        addr: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    /// `tcp://host:2375` without TLS (only on networks that are trusted).
    Plain(String),
}

/// One `[[discovery.docker]]` host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Names the host in status and as the targets' owner (`docker:<name>`).
    pub name: String,
    pub endpoint: Endpoint,
    /// Where this host's published ports are reached.
    pub host_address: IpAddr,
    /// The container network whose addresses are used for ports that are not published.
    pub network: Option<String>,
}

impl Source {
    /// The host in the file schema.
    pub fn to_file(&self) -> crate::config::file::DockerFile {
        let mut f = crate::config::file::DockerFile {
            name: Some(self.name.clone()),
            host_address: Some(self.host_address),
            network: self.network.clone(),
            ..Default::default()
        };
        match &self.endpoint {
            Endpoint::Unix(p) => f.endpoint = Some(format!("unix://{}", p.display())),
            Endpoint::Plain(a) => f.endpoint = Some(a.clone()),
            Endpoint::Tls {
                addr,
                ca,
                cert,
                key,
            } => {
                f.endpoint = Some(format!("tcp://{}", addr.trim_start_matches("https://")));
                f.tls_ca = Some(ca.clone());
                f.tls_cert = Some(cert.clone());
                f.tls_key = Some(key.clone());
            }
        }
        f
    }

    /// The owner tag of its targets.
    pub fn owner(&self) -> String {
        format!("docker:{}", self.name)
    }
}

/// The targets one host's containers say there should be, keyed by VIP and target.
pub type Targets = BTreeMap<(VipId, SocketAddr), Found>;

/// What a watcher reports: the host's targets, whenever they change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub owner: String,
    pub targets: Targets,
}

const TIMEOUT_SECS: u64 = 10;

fn connect(e: &Endpoint) -> Result<Docker, bollard::errors::Error> {
    match e {
        Endpoint::Unix(p) => Docker::connect_with_unix(
            &format!("unix://{}", p.display()),
            TIMEOUT_SECS,
            API_DEFAULT_VERSION,
        ),
        Endpoint::Tls {
            addr,
            ca,
            cert,
            key,
        } => Docker::connect_with_ssl(addr, key, cert, ca, TIMEOUT_SECS, API_DEFAULT_VERSION),
        Endpoint::Plain(addr) => Docker::connect_with_http(addr, TIMEOUT_SECS, API_DEFAULT_VERSION),
    }
}

/// The labelled running containers of the host, made into targets. Containers that are
/// not ready are left out; wrong labels are logged once per container and label value.
async fn sync(
    docker: &Docker,
    src: &Source,
    vips: &BTreeSet<VipId>,
    warned: &mut BTreeSet<(String, String)>,
    stopping: &BTreeSet<String>,
) -> Result<Targets, bollard::errors::Error> {
    let list = docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![LABEL_VIP.to_owned()],
            )])),
            ..Default::default()
        }))
        .await?;
    let mut out = Targets::new();
    for c in list {
        let Some(id) = c.id else { continue };
        // Being stopped: no new connections from now on (deregistered, its existing ones
        // finish), though it still runs.
        if stopping.contains(&id) {
            continue;
        }
        let inspected = match docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(i) => i,
            // Gone between the list and the inspect: it is not a target.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => continue,
            Err(e) => return Err(e),
        };
        match target_of(&inspected, src.host_address, vips, src.network.as_deref()) {
            Ok(f) => {
                out.insert((f.vip, f.target), f);
            }
            Err(Skip::NotReady(why)) => {
                tracing::debug!(docker = %src.name, container = %id, "not a target yet: {why}");
            }
            Err(Skip::Bad(why)) => {
                if warned.insert((id.clone(), why.clone())) {
                    tracing::warn!(docker = %src.name, container = %id, "ignoring the container: {why}");
                }
            }
        }
    }
    Ok(out)
}

/// Keeps the set of containers being stopped up to date with an event.
fn note_stop(e: &bollard::models::EventMessage, stopping: &mut BTreeSet<String>) {
    let Some(actor) = &e.actor else { return };
    let Some(id) = actor.id.clone() else { return };
    match e.action.as_deref() {
        Some("kill") => {
            let signal = actor
                .attributes
                .as_ref()
                .and_then(|a| a.get("signal"))
                .map(String::as_str);
            // SIGTERM, SIGINT, SIGQUIT: the usual stop signals (by name or number).
            if matches!(
                signal,
                Some("15" | "2" | "3" | "SIGTERM" | "SIGINT" | "SIGQUIT" | "TERM" | "INT" | "QUIT")
            ) {
                stopping.insert(id);
            }
        }
        Some("start" | "destroy") => {
            stopping.remove(&id);
        }
        _ => {}
    }
}

/// Follows the host until the receiver of `tx` is gone. `vips` is the configuration's
/// set of VIPs (a change makes it list again).
pub async fn watch(
    src: Source,
    mut vips: watch::Receiver<BTreeSet<VipId>>,
    tx: mpsc::Sender<Update>,
) {
    let mut backoff = Duration::from_secs(1);
    let mut down_since: Option<std::time::Instant> = None;
    let mut last: Option<Targets> = None;
    let mut warned = BTreeSet::new();
    // Containers sent their stop signal (`docker stop`: a `kill` event with SIGTERM or
    // SIGINT or SIGQUIT) and not started again since.
    let mut stopping: BTreeSet<String> = BTreeSet::new();
    loop {
        let result: Result<(), bollard::errors::Error> = async {
            let docker = connect(&src.endpoint)?;
            docker.ping().await?;
            // Events first, so nothing that happens during the listing is missed.
            let mut events = Box::pin(docker.events(Some(EventsOptions {
                filters: Some(HashMap::from([
                    ("type".to_owned(), vec!["container".to_owned()]),
                    ("label".to_owned(), vec![LABEL_VIP.to_owned()]),
                ])),
                ..Default::default()
            })));
            if let Some(t) = down_since.take() {
                tracing::info!(docker = %src.name, "Docker reachable again after {:.0?}; reconciling", t.elapsed());
            }
            // A container seen stopping before the outage may have been started again
            // meanwhile, unseen: the listing decides now (one still stopping is a target
            // until its `die`, a moment).
            stopping.clear();
            backoff = Duration::from_secs(1);
            loop {
                let known = vips.borrow_and_update().clone();
                let targets = sync(&docker, &src, &known, &mut warned, &stopping).await?;
                if last.as_ref() != Some(&targets) {
                    last = Some(targets.clone());
                    if tx.send(Update { owner: src.owner(), targets }).await.is_err() {
                        return Ok(());
                    }
                }
                // Until something changes: an event (then a short pause for its burst),
                // the VIPs, or a periodic check in case an event was lost.
                tokio::select! {
                    e = events.next() => match e {
                        Some(Ok(e)) => {
                            note_stop(&e, &mut stopping);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Some(Err(e)) => return Err(e),
                        None => return Err(bollard::errors::Error::IOError {
                            err: std::io::Error::other("the event stream ended"),
                        }),
                    },
                    r = vips.changed() => if r.is_err() { return Ok(()) },
                    // Sent again even if unchanged: an update the daemon could not apply
                    // (a refused configuration, a full map) is retried.
                    () = tokio::time::sleep(Duration::from_secs(30)) => last = None,
                }
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => {
                if down_since.is_none() {
                    down_since = Some(std::time::Instant::now());
                    tracing::warn!(
                        docker = %src.name,
                        "Docker unreachable ({e}); keeping its last known targets and retrying"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
