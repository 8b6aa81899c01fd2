//! One task per pod: makes its sandbox, runs its containers through
//! containerd, restarts them by policy with back-off, runs the probes,
//! reports status, and on deletion stops everything gracefully and removes
//! what the pod had. Event-driven: it wakes on a new pod spec, a container
//! exit, a probe result, or the end of a back-off.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use skiff_api::v1::{Container, PodStatus, Secret, Time};
use skiff_api::{ConfigMap, Pod};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::probe::{self, ProbeKind};
use super::resolve::{self, StartError};
use super::restart::{Backoff, should_restart};
use super::sandbox::{self, Sandbox, uid_of};
use super::status::{CState, ContainerView, PodFacts, pod_status};
use super::{Adopted, Ctx, labels};
use crate::image::Reference;
use crate::logs::shim_logger;
use crate::runtime::ExitStatus;
use crate::spec::{self, SpecInput};

#[derive(Debug)]
pub enum Msg {
    Update(Arc<Pod>),
    /// The pod is gone from the API (deleted without grace): its last state.
    Gone(Arc<Pod>),
    Exited {
        name: String,
        id: String,
        status: ExitStatus,
    },
    Probe {
        name: String,
        id: String,
        kind: ProbeKind,
        result: Result<(), String>,
    },
}

struct Ctr {
    spec: Container,
    /// An init container: runs to completion, in order, before the others.
    init: bool,
    /// containerd id of the current container.
    id: Option<String>,
    restart_count: i32,
    state: CState,
    last_state: Option<CState>,
    ready: bool,
    started: Option<Instant>,
    started_at: Option<Time>,
    backoff: Backoff,
    /// Waiting for a back-off (crash or image) to end.
    retry_at: Option<Instant>,
    /// Terminated for good (its restart policy says so).
    done: bool,
    probers: Vec<JoinHandle<()>>,
    /// Probers were started for the current container (they may have been
    /// stopped since, when a liveness failure is killing it).
    probing: bool,
    /// Per probe kind: consecutive successes and failures.
    probe_runs: HashMap<ProbeKind, (u32, u32)>,
    startup_passed: bool,
    image_id: String,
}

impl Ctr {
    fn new(spec: Container, init: bool, ctx: &Ctx) -> Ctr {
        Ctr {
            spec,
            init,
            id: None,
            restart_count: 0,
            state: CState::waiting("ContainerCreating", ""),
            last_state: None,
            ready: false,
            started: None,
            started_at: None,
            backoff: Backoff::new(ctx.cfg.base_backoff, ctx.cfg.max_backoff),
            retry_at: None,
            done: false,
            probers: Vec::new(),
            probing: false,
            probe_runs: HashMap::new(),
            startup_passed: false,
            image_id: String::new(),
        }
    }

    /// An init container that finished with exit code 0.
    fn completed(&self) -> bool {
        self.init && self.done && matches!(self.state, CState::Terminated { exit_code: 0, .. })
    }

    fn stop_probers(&mut self) {
        for p in self.probers.drain(..) {
            p.abort();
        }
        self.probe_runs.clear();
        self.startup_passed = false;
    }
}

pub struct Worker {
    ctx: Arc<Ctx>,
    pod: Pod,
    uid: String,
    tx: mpsc::Sender<Msg>,
    sandbox: Option<Sandbox>,
    sandbox_retry: Option<Instant>,
    sandbox_error: Option<(String, String)>,
    ctrs: BTreeMap<String, Ctr>,
    order: Vec<String>,
    init_order: Vec<String>,
    start_time: Option<Time>,
    pushed: Option<PodStatus>,
    push_retry: Option<Instant>,
    gone: bool,
    exec_seq: u64,
}

fn ns_name(pod: &Pod) -> (String, String) {
    let m = pod.metadata.clone().unwrap_or_default();
    (m.namespace, m.name)
}

impl Worker {
    pub fn new(ctx: Arc<Ctx>, pod: Pod, tx: mpsc::Sender<Msg>) -> Worker {
        let uid = uid_of(&pod).to_string();
        let mut ctrs = BTreeMap::new();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut init_order = Vec::new();
        for c in spec.init_containers {
            init_order.push(c.name.clone());
            ctrs.insert(c.name.clone(), Ctr::new(c, true, &ctx));
        }
        let mut order = Vec::new();
        for c in spec.containers {
            order.push(c.name.clone());
            let mut ctr = Ctr::new(c, false, &ctx);
            if !init_order.is_empty() {
                ctr.state = CState::waiting("PodInitializing", "");
            }
            ctrs.insert(ctr.spec.name.clone(), ctr);
        }
        let start_time = pod.status.as_ref().and_then(|s| s.start_time);
        let pushed = pod.status.clone();
        Worker {
            ctx,
            pod,
            uid,
            tx,
            sandbox: None,
            sandbox_retry: None,
            sandbox_error: None,
            ctrs,
            order,
            init_order,
            start_time,
            pushed,
            push_retry: None,
            gone: false,
            exec_seq: 0,
        }
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .map(|s| s.restart_policy.clone())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "Always".into())
    }

    fn deleting(&self) -> bool {
        self.gone
            || self
                .pod
                .metadata
                .as_ref()
                .is_some_and(|m| m.deletion_timestamp.is_some())
    }

    fn grace(&self) -> Duration {
        let meta = self.pod.metadata.clone().unwrap_or_default();
        let secs = match meta.deletion_grace_period_seconds {
            Some(g) => g,
            // Force-deleted: the kubelet's minimum grace.
            None if self.gone => 2,
            None => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30),
        }
        .max(0);
        Duration::from_secs(secs as u64)
    }

    /// Takes over the containers a previous run of the node left: running
    /// tasks keep running; stopped ones count as exits.
    pub async fn adopt(&mut self, found: Vec<Adopted>) {
        let mut latest: HashMap<String, Adopted> = HashMap::new();
        for a in found {
            let name = a.labels.get(labels::CONTAINER).cloned().unwrap_or_default();
            match latest.get(&name) {
                Some(b) if b.restart >= a.restart => {
                    self.discard(&a.id).await;
                }
                _ => {
                    if let Some(old) = latest.insert(name, a) {
                        self.discard(&old.id).await;
                    }
                }
            }
        }
        let prev = self.pod.status.clone().unwrap_or_default();
        for (name, a) in latest {
            let Some(c) = self.ctrs.get_mut(&name) else {
                self.discard(&a.id).await;
                continue;
            };
            c.id = Some(a.id.clone());
            c.restart_count = a.restart;
            let api = prev
                .container_statuses
                .iter()
                .chain(prev.init_container_statuses.iter())
                .find(|s| s.name == name);
            if let Some(s) = api {
                c.image_id = s.image_id.clone();
                c.last_state = s.last_state.as_ref().and_then(terminated_state);
            }
            if a.running {
                let started_at = api
                    .filter(|s| s.container_id == format!("containerd://{}", a.id))
                    .and_then(|s| s.state.as_ref())
                    .and_then(|st| st.running.as_ref())
                    .and_then(|r| r.started_at)
                    .unwrap_or_else(Time::now_seconds);
                c.state = CState::Running { started_at };
                c.started_at = Some(started_at);
                c.started = Some(Instant::now());
                // Readiness as reported before the restart: endpoints do not
                // flap because the node daemon restarted. Probes resume in
                // the next sync and correct it.
                c.ready = api
                    .filter(|s| s.container_id == format!("containerd://{}", a.id))
                    .map(|s| s.ready)
                    .unwrap_or(c.spec.readiness_probe.is_none());
                c.startup_passed = c.spec.startup_probe.is_none() || c.ready;
                tracing::info!(pod = %self.uid, container = %name, id = %a.id, "adopted a running container");
                let (ctd, tx, id, n) = (
                    self.ctx.ctd.clone(),
                    self.tx.clone(),
                    a.id.clone(),
                    name.clone(),
                );
                tokio::spawn(async move {
                    if let Ok(status) = ctd.wait(&id, "").await {
                        let _ = tx
                            .send(Msg::Exited {
                                name: n,
                                id,
                                status,
                            })
                            .await;
                    }
                });
            } else {
                // It stopped while the node was away (or never started, or
                // ended before: then the API's record of it counts).
                let recorded = api
                    .and_then(|s| s.state.as_ref())
                    .and_then(|st| st.terminated.as_ref())
                    .filter(|t| t.container_id == format!("containerd://{}", a.id))
                    .map(|t| ExitStatus {
                        code: t.exit_code as u32,
                        at: t.finished_at.map(|f| f.seconds).unwrap_or(0),
                    });
                let status = match self.ctx.ctd.delete_task(&a.id).await {
                    Ok(Some(s)) => s,
                    Ok(None) => recorded.unwrap_or(ExitStatus { code: 255, at: 0 }),
                    Err(e) => {
                        tracing::warn!(pod = %self.uid, container = %name, "a stopped task could not be deleted: {e:#}");
                        ExitStatus { code: 255, at: 0 }
                    }
                };
                let _ = self
                    .tx
                    .send(Msg::Exited {
                        name,
                        id: a.id,
                        status,
                    })
                    .await;
            }
        }
    }

    async fn discard(&self, id: &str) {
        let _ = self.ctx.ctd.kill(id, 9, true).await;
        let _ = self.ctx.ctd.delete_task(id).await;
        let _ = self.ctx.ctd.delete_container(id).await;
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            if self.deleting() {
                self.terminate().await;
                return;
            }
            self.sync().await;
            // Probe results that start the prober tasks need the sandbox.
            let deadline = self
                .ctrs
                .values()
                .filter_map(|c| c.retry_at)
                .chain(self.sandbox_retry)
                .chain(self.push_retry)
                .chain(self.sandbox.as_ref().and_then(|s| s.token_renew))
                .min();
            let msg = match deadline {
                Some(d) => tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(d.into()) => continue,
                },
                None => rx.recv().await,
            };
            let Some(msg) = msg else {
                // The manager is gone (the node daemon is stopping): leave
                // the containers running, as a restart adopts them.
                self.stop_all_probers();
                return;
            };
            self.handle(msg).await;
            // Take whatever else is queued before the next sync.
            while let Ok(m) = rx.try_recv() {
                self.handle(m).await;
            }
        }
    }

    fn stop_all_probers(&mut self) {
        for c in self.ctrs.values_mut() {
            c.stop_probers();
        }
    }

    async fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Update(p) => {
                if uid_of(&p) == self.uid {
                    // The node lifecycle controller marked the pod not ready
                    // while this node was cut off: say the truth again.
                    let marked = |s: Option<&PodStatus>| {
                        s.is_some_and(|s| {
                            s.conditions
                                .iter()
                                .any(|c| c.r#type == "Ready" && c.reason == "NodeNotReady")
                        })
                    };
                    if marked(p.status.as_ref()) && !marked(self.pushed.as_ref()) {
                        self.pushed = p.status.clone();
                    }
                    self.pod = Pod::clone(&p);
                }
            }
            Msg::Gone(p) => {
                self.gone = true;
                if uid_of(&p) == self.uid {
                    self.pod.metadata = p.metadata.clone();
                }
            }
            Msg::Exited { name, id, status } => self.on_exit(&name, &id, status).await,
            Msg::Probe {
                name,
                id,
                kind,
                result,
            } => self.on_probe(&name, &id, kind, result).await,
        }
    }

    async fn on_exit(&mut self, name: &str, id: &str, status: ExitStatus) {
        let policy = self.restart_policy();
        let Some(c) = self.ctrs.get_mut(name) else {
            return;
        };
        if c.id.as_deref() != Some(id) {
            return;
        }
        c.stop_probers();
        c.probing = false;
        c.ready = false;
        let code = status.code as i32;
        let finished_at = if status.at > 0 {
            Time {
                seconds: status.at,
                nanos: 0,
            }
        } else {
            Time::now_seconds()
        };
        let terminated = CState::Terminated {
            exit_code: code,
            signal: if code > 128 { code - 128 } else { 0 },
            reason: if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message: String::new(),
            started_at: c.started_at,
            finished_at,
            container_id: format!("containerd://{id}"),
        };
        let ran = c.started.map(|s| s.elapsed()).unwrap_or_default();
        c.started = None;
        // The shim ends what was exec'd into the container; their callers
        // get those exits before the task (and its shim) goes.
        if !self.ctx.execs.settled(id, Duration::from_secs(2)).await {
            tracing::warn!(pod = %self.uid, container = %name, "exec'd processes outlived their container");
        }
        let _ = self.ctx.ctd.delete_task(id).await;
        tracing::info!(pod = %self.uid, container = %name, exit = code, "container exited");
        // An init container that succeeded is done; one that failed runs
        // again unless the pod never restarts anything.
        let restart = if c.init {
            code != 0 && policy != "Never"
        } else {
            should_restart(&policy, code)
        };
        if !restart || self.gone {
            c.state = terminated;
            c.done = true;
            return;
        }
        let delay = c.backoff.on_exit(ran);
        c.last_state = Some(terminated.clone());
        if delay.is_zero() {
            c.state = terminated;
            c.retry_at = Some(Instant::now());
        } else {
            let (ns, pod) = ns_name(&self.pod);
            c.state = CState::waiting(
                "CrashLoopBackOff",
                format!(
                    "back-off {}s restarting failed container={name} pod={pod}_{ns}({})",
                    delay.as_secs(),
                    self.uid
                ),
            );
            c.retry_at = Some(Instant::now() + delay);
            let msg = format!("Back-off restarting failed container {name} in pod {pod}_{ns}");
            self.ctx.event(&self.pod, "Warning", "BackOff", &msg);
        }
    }

    async fn on_probe(
        &mut self,
        name: &str,
        id: &str,
        kind: ProbeKind,
        result: Result<(), String>,
    ) {
        let Some(c) = self.ctrs.get_mut(name) else {
            return;
        };
        if c.id.as_deref() != Some(id) || !matches!(c.state, CState::Running { .. }) {
            return;
        }
        let probe = match kind {
            ProbeKind::Liveness => c.spec.liveness_probe.clone(),
            ProbeKind::Readiness => c.spec.readiness_probe.clone(),
            ProbeKind::Startup => c.spec.startup_probe.clone(),
        };
        let Some(probe) = probe else { return };
        if kind != ProbeKind::Startup && c.spec.startup_probe.is_some() && !c.startup_passed {
            return;
        }
        let t = probe::timing(&probe);
        let runs = c.probe_runs.entry(kind).or_insert((0, 0));
        match &result {
            Ok(()) => *runs = (runs.0 + 1, 0),
            Err(_) => *runs = (0, runs.1 + 1),
        }
        let (ok_runs, failed_runs) = *runs;
        match kind {
            ProbeKind::Readiness => {
                if ok_runs >= t.success_threshold {
                    c.ready = true;
                } else if failed_runs >= t.failure_threshold {
                    c.ready = false;
                }
            }
            ProbeKind::Startup => {
                if ok_runs >= 1 {
                    c.startup_passed = true;
                    if c.spec.readiness_probe.is_none() {
                        c.ready = true;
                    }
                }
            }
            ProbeKind::Liveness => {}
        }
        let unhealthy = failed_runs >= t.failure_threshold
            && matches!(kind, ProbeKind::Liveness | ProbeKind::Startup);
        if let Err(why) = &result {
            let msg = format!("{kind:?} probe failed: {why}");
            self.ctx.event(&self.pod, "Warning", "Unhealthy", &msg);
        }
        if unhealthy {
            let id = id.to_string();
            let msg = format!("Container {name} failed {kind:?} probe, will be restarted");
            self.ctx.event(&self.pod, "Normal", "Killing", &msg);
            tracing::info!(pod = %self.uid, container = %name, "{msg}");
            c.stop_probers();
            let grace = self.grace();
            let ctd = self.ctx.ctd.clone();
            // The exit arrives through the container's waiter.
            tokio::spawn(async move { stop_container(&ctd, &id, grace).await });
        }
    }

    /// Renews the ServiceAccount token when it is due; a failure is tried
    /// again in 10 s (the old token keeps working until it expires).
    async fn renew_token(&mut self) {
        let Some(ca) = self.ctx.server_ca.clone() else {
            return;
        };
        let Some(sb) = &mut self.sandbox else { return };
        if sb.token_renew.is_none_or(|t| t > Instant::now()) {
            return;
        }
        let dir = sandbox::pod_dir(&self.ctx, &self.uid);
        sb.token_renew = Some(
            match super::satoken::refresh(&self.ctx, &self.pod, &dir, &ca).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(pod = %self.uid, "renewing the service account token: {e:#}");
                    Instant::now() + Duration::from_secs(10)
                }
            },
        );
    }

    /// Converges: sandbox, containers that are due to (re)start, status.
    async fn sync(&mut self) {
        if self.sandbox.is_none() && self.sandbox_retry.is_none_or(|t| t <= Instant::now()) {
            match sandbox::ensure(&self.ctx, &self.pod).await {
                Ok(s) => {
                    self.sandbox = Some(s);
                    self.sandbox_error = None;
                    self.sandbox_retry = None;
                }
                Err(e) => {
                    tracing::warn!(pod = %self.uid, "sandbox: {e:#}");
                    let msg = format!("{e:#}");
                    if self.sandbox_error.as_ref().map(|(_, m)| m) != Some(&msg) {
                        self.ctx
                            .event(&self.pod, "Warning", "FailedCreatePodSandBox", &msg);
                    }
                    self.sandbox_error = Some(("FailedCreatePodSandBox".into(), msg));
                    self.sandbox_retry = Some(Instant::now() + Duration::from_secs(2));
                }
            }
        }
        self.renew_token().await;
        if self.start_time.is_none() {
            self.start_time = Some(Time::now_seconds());
        }
        if let Some(sb) = &self.sandbox {
            let pod_ip = IpAddr::V4(sb.ip);
            let adopted: Vec<String> = self
                .ctrs
                .iter()
                .filter(|(_, c)| matches!(c.state, CState::Running { .. }) && !c.probing)
                .map(|(n, _)| n.clone())
                .collect();
            for name in adopted {
                self.start_probers(&name, pod_ip);
            }
        }
        if self.sandbox.is_some() {
            let now = Instant::now();
            // Init containers one at a time, in order; the others only
            // once every init container has completed.
            let pending_init = self
                .init_order
                .iter()
                .find(|n| !self.ctrs[*n].completed())
                .cloned();
            let candidates: Vec<String> = match pending_init {
                Some(n) if self.ctrs[&n].done => Vec::new(), // failed for good
                Some(n) => vec![n],
                None => self.order.clone(),
            };
            let due: Vec<String> = candidates
                .iter()
                .filter(|n| {
                    let c = &self.ctrs[*n];
                    !c.done
                        && !matches!(c.state, CState::Running { .. })
                        && (c.id.is_none() || c.retry_at.is_some())
                        && c.retry_at.is_none_or(|t| t <= now)
                })
                .cloned()
                .collect();
            for name in due {
                self.start(&name).await;
            }
        }
        self.push_status().await;
    }

    async fn start(&mut self, name: &str) {
        let result = self.try_start(name).await;
        let Some(c) = self.ctrs.get_mut(name) else {
            return;
        };
        match result {
            Ok(()) => {
                c.retry_at = None;
            }
            Err(e) => {
                let reason = e.reason();
                let msg = format!("{:#}", e.error());
                tracing::warn!(pod = %self.uid, container = %name, "{reason}: {msg}");
                let delay = c
                    .backoff
                    .on_exit(Duration::ZERO)
                    .max(Duration::from_secs(1));
                let shown = if reason == "ErrImagePull" && c.retry_at.is_some() {
                    "ImagePullBackOff"
                } else {
                    reason
                };
                c.state = CState::waiting(shown, msg.clone());
                c.retry_at = Some(Instant::now() + delay);
                self.ctx.event(&self.pod, "Warning", "Failed", &msg);
            }
        }
    }

    /// Creates and starts a container; on failure the reason the status
    /// shows.
    async fn try_start(&mut self, name: &str) -> Result<(), StartError> {
        let sb = self.sandbox.clone().expect("sandbox made first");
        let (ns, pod_name) = ns_name(&self.pod);
        let (spec_c, restart) = {
            let c = &self.ctrs[name];
            let next = if c.id.is_some() {
                c.restart_count + 1
            } else {
                c.restart_count
            };
            (c.spec.clone(), next)
        };
        // Whatever the last container left.
        if let Some(old) = self.ctrs[name].id.clone() {
            self.discard(&old).await;
        }
        let reference =
            Reference::parse(&spec_c.image).map_err(|e| StartError::InvalidImageName(e.into()))?;
        let image_name = reference.to_string();
        let image = match self.ctx.ctd.resolve(&image_name).await {
            Ok(Some(i)) => i,
            Ok(None) => match self
                .ctx
                .pull(&reference, &self.pull_credentials().await)
                .await
            {
                Ok(()) => self
                    .ctx
                    .ctd
                    .resolve(&image_name)
                    .await
                    .map_err(StartError::ErrImagePull)?
                    .ok_or_else(|| {
                        StartError::ErrImagePull(anyhow::anyhow!(
                            "image {image_name} vanished after the pull"
                        ))
                    })?,
                Err(e) => return Err(StartError::ErrImagePull(e)),
            },
            Err(e) => return Err(StartError::ErrImagePull(e)),
        };
        let env = self
            .resolve_env(&spec_c, &sb)
            .await
            .map_err(StartError::CreateContainerConfigError)?;
        let mounts = resolve::mounts(&spec_c, &sb.mounts, &sb.volumes)
            .map_err(StartError::CreateContainerConfigError)?;
        let slot = match self.init_order.iter().position(|n| n == name) {
            Some(i) => format!("i{i}"),
            None => self
                .order
                .iter()
                .position(|n| n == name)
                .unwrap_or(0)
                .to_string(),
        };
        let id = format!("{}.{slot}.{restart}", self.uid);
        let oci = spec::build(&SpecInput {
            container: &spec_c,
            image: &image.config,
            env,
            hostname: sandbox::hostname(&self.pod),
            netns: sb.netns.clone(),
            cgroup: super::cgroups::container_path(&self.ctx.cfg.cgroup_parent, &self.uid, &id),
            mounts,
        })
        .map_err(|e| StartError::CreateContainerConfigError(anyhow::anyhow!(e)))?;
        let log = self
            .ctx
            .cfg
            .log_dir
            .join(format!("{ns}_{pod_name}_{}", self.uid))
            .join(name)
            .join(format!("{restart}.log"));
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StartError::RunContainerError(e.into()))?;
        }
        let labels = HashMap::from([
            (labels::POD_UID.to_string(), self.uid.clone()),
            (labels::POD_NAME.to_string(), pod_name.clone()),
            (labels::POD_NAMESPACE.to_string(), ns.clone()),
            (labels::CONTAINER.to_string(), name.to_string()),
            (labels::RESTART.to_string(), restart.to_string()),
        ]);
        let create = crate::runtime::ContainerSpec {
            id: id.clone(),
            image: image_name.clone(),
            parent_snapshot: image.chain_id.clone(),
            spec: oci,
            labels,
        };
        let run = async {
            self.ctx.ctd.create_container(&create).await?;
            self.ctx
                .ctd
                .create_task(
                    &id,
                    &shim_logger::stdio_uri(&self.ctx.cfg.skiff_binary, &log),
                )
                .await?;
            // The waiter is in place before the process runs.
            let (ctd, tx, wid, n) = (
                self.ctx.ctd.clone(),
                self.tx.clone(),
                id.clone(),
                name.to_string(),
            );
            tokio::spawn(async move {
                match ctd.wait(&wid, "").await {
                    Ok(status) => {
                        let _ = tx
                            .send(Msg::Exited {
                                name: n,
                                id: wid,
                                status,
                            })
                            .await;
                    }
                    Err(e) => tracing::warn!("waiting for {wid}: {e:#}"),
                }
            });
            self.ctx.ctd.start_task(&id).await?;
            anyhow::Ok(())
        };
        if let Err(e) = run.await {
            self.discard(&id).await;
            return Err(StartError::RunContainerError(e));
        }
        let started_at = Time::now_seconds();
        let pod_ip = IpAddr::V4(sb.ip);
        let c = self.ctrs.get_mut(name).expect("container");
        c.id = Some(id.clone());
        c.restart_count = restart;
        c.started = Some(Instant::now());
        c.started_at = Some(started_at);
        c.state = CState::Running { started_at };
        c.image_id = image.config_digest.clone();
        c.ready = c.spec.readiness_probe.is_none() && c.spec.startup_probe.is_none();
        self.start_probers(name, pod_ip);
        let msg = format!("Started container {name}");
        self.ctx.event(&self.pod, "Normal", "Started", &msg);
        tracing::info!(pod = %self.uid, container = %name, %id, "started");
        Ok(())
    }

    /// One task per probe of a running container, reporting to the worker.
    fn start_probers(&mut self, name: &str, pod_ip: IpAddr) {
        let Some(c) = self.ctrs.get_mut(name) else {
            return;
        };
        let Some(id) = c.id.clone() else { return };
        c.probing = true;
        for (kind, p) in [
            (ProbeKind::Startup, c.spec.startup_probe.clone()),
            (ProbeKind::Liveness, c.spec.liveness_probe.clone()),
            (ProbeKind::Readiness, c.spec.readiness_probe.clone()),
        ] {
            let Some(p) = p else { continue };
            self.exec_seq += 1000;
            let seq = self.exec_seq;
            let (ctd, tx, cid, n, spec_c) = (
                self.ctx.ctd.clone(),
                self.tx.clone(),
                id.clone(),
                name.to_string(),
                c.spec.clone(),
            );
            c.probers.push(tokio::spawn(async move {
                let t = probe::timing(&p);
                tokio::time::sleep(t.initial_delay).await;
                let mut i = 0;
                loop {
                    i += 1;
                    let result = probe::run(&p, &spec_c, pod_ip, &ctd, &cid, seq + i).await;
                    let msg = Msg::Probe {
                        name: n.clone(),
                        id: cid.clone(),
                        kind,
                        result,
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(t.period).await;
                }
            }));
        }
    }

    /// The registry credentials of the pod's imagePullSecrets (those that
    /// are missing or of another type are skipped, as the kubelet does).
    async fn pull_credentials(&self) -> crate::image::registry::Credentials {
        use base64::Engine;
        let mut creds = crate::image::registry::Credentials::default();
        let meta = self.pod.metadata.clone().unwrap_or_default();
        let names: Vec<String> = self
            .pod
            .spec
            .as_ref()
            .map(|s| {
                s.image_pull_secrets
                    .iter()
                    .map(|r| r.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        for name in names {
            let secret = match self.ctx.client.get::<Secret>(&meta.namespace, &name).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(pod = %self.uid, "imagePullSecret {name:?}: {e}");
                    continue;
                }
            };
            let Some(doc) = secret.data.get(".dockerconfigjson") else {
                tracing::warn!(pod = %self.uid, "imagePullSecret {name:?} has no .dockerconfigjson");
                continue;
            };
            let added = base64::engine::general_purpose::STANDARD
                .decode(doc)
                .map_err(anyhow::Error::from)
                .and_then(|json| creds.add_docker_config(&json));
            if let Err(e) = added {
                tracing::warn!(pod = %self.uid, "imagePullSecret {name:?}: {e:#}");
            }
        }
        creds
    }

    /// The container's environment with every valueFrom resolved (the
    /// ConfigMaps it names fetched first).
    async fn resolve_env(&self, c: &Container, sb: &Sandbox) -> Result<Vec<(String, String)>> {
        let meta = self.pod.metadata.clone().unwrap_or_default();
        let spec = self.pod.spec.clone().unwrap_or_default();
        let mut maps = HashMap::new();
        for name in resolve::config_maps_needed(c) {
            match self
                .ctx
                .client
                .get::<ConfigMap>(&meta.namespace, &name)
                .await
            {
                Ok(m) => maps.insert(name, Some(m)),
                Err(e) if e.is_not_found() => maps.insert(name, None),
                Err(e) => return Err(anyhow::anyhow!("configmap {name:?}: {e}")),
            };
        }
        let mut secrets = HashMap::new();
        for name in resolve::secrets_needed(c) {
            match self.ctx.client.get::<Secret>(&meta.namespace, &name).await {
                Ok(s) => secrets.insert(name, Some(s)),
                Err(e) if e.is_not_found() => secrets.insert(name, None),
                Err(e) => return Err(anyhow::anyhow!("secret {name:?}: {e}")),
            };
        }
        let src = resolve::EnvSource {
            meta: &meta,
            spec: &spec,
            pod_ip: sb.ip,
            host_ip: self.ctx.node_ip,
        };
        resolve::env(c, &src, &maps, &secrets)
    }

    fn views(&self, names: &[String]) -> Vec<ContainerView> {
        names
            .iter()
            .map(|n| {
                let c = &self.ctrs[n];
                ContainerView {
                    name: n.clone(),
                    image: c.spec.image.clone(),
                    image_id: c.image_id.clone(),
                    container_id: c
                        .id
                        .as_ref()
                        .map(|i| format!("containerd://{i}"))
                        .unwrap_or_default(),
                    state: c.state.clone(),
                    last_state: c.last_state.clone(),
                    restart_count: c.restart_count,
                    ready: c.ready || c.completed(),
                }
            })
            .collect()
    }

    async fn push_status(&mut self) {
        let facts = PodFacts {
            restart_policy: self.restart_policy(),
            pod_ip: self.sandbox.as_ref().map(|s| s.ip.to_string()),
            host_ip: self.ctx.node_ip.to_string(),
            start_time: self.start_time,
            problem: self.sandbox_error.clone(),
        };
        let status = pod_status(
            self.pushed.as_ref(),
            &self.views(&self.init_order),
            &self.views(&self.order),
            &facts,
            Time::now_seconds(),
        );
        if self.pushed.as_ref() == Some(&status) {
            self.push_retry = None;
            return;
        }
        let mut pod = self.pod.clone();
        pod.status = Some(status.clone());
        match self.ctx.client.update_status(&pod).await {
            Ok(p) => {
                self.pod.metadata = p.metadata;
                self.pushed = Some(status);
                self.push_retry = None;
            }
            Err(e) if e.is_conflict() => {
                // Someone else wrote the pod: read it and try again.
                let (ns, name) = ns_name(&self.pod);
                match self.ctx.client.get::<Pod>(&ns, &name).await {
                    Ok(fresh) if uid_of(&fresh) == self.uid => self.pod = fresh,
                    Ok(_) => self.gone = true,
                    Err(e) if e.is_not_found() => self.gone = true,
                    Err(_) => {}
                }
                self.push_retry = Some(Instant::now());
            }
            Err(e) if e.is_not_found() => self.gone = true,
            Err(e) => {
                tracing::debug!(pod = %self.uid, "status update: {e}");
                self.push_retry = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }

    /// Graceful termination, then removal of everything the pod had, then
    /// the pod object itself (the node confirms the deletion).
    async fn terminate(&mut self) {
        let grace = self.grace();
        self.stop_all_probers();
        let ids: Vec<String> = self.ctrs.values().filter_map(|c| c.id.clone()).collect();
        if !ids.is_empty() {
            let msg = format!("Stopping containers (grace period {}s)", grace.as_secs());
            self.ctx.event(&self.pod, "Normal", "Killing", &msg);
        }
        let stops = ids
            .iter()
            .map(|id| stop_container(&self.ctx.ctd, id, grace));
        futures::future::join_all(stops).await;
        for id in &ids {
            let _ = self.ctx.ctd.delete_task(id).await;
            if let Err(e) = self.ctx.ctd.delete_container(id).await {
                tracing::warn!(pod = %self.uid, "deleting container {id}: {e:#}");
            }
        }
        // Any container of this pod the bookkeeping missed.
        if let Ok(all) = self.ctx.ctd.containers().await {
            for (id, l) in all {
                if l.get(labels::POD_UID) == Some(&self.uid) {
                    self.discard(&id).await;
                }
            }
        }
        if let Err(e) = sandbox::teardown(&self.ctx, &self.uid).await {
            tracing::warn!(pod = %self.uid, "removing the sandbox: {e:#}");
        }
        if !self.gone {
            let (ns, name) = ns_name(&self.pod);
            match self.ctx.client.get::<Pod>(&ns, &name).await {
                Ok(p) if uid_of(&p) == self.uid => {
                    if let Err(e) = self
                        .ctx
                        .client
                        .delete_with_grace::<Pod>(&ns, &name, 0)
                        .await
                        && !e.is_not_found()
                    {
                        tracing::warn!(pod = %self.uid, "confirming the deletion: {e}");
                    }
                }
                _ => {}
            }
        }
        tracing::info!(pod = %self.uid, "pod removed from the node");
    }
}

fn terminated_state(s: &skiff_api::v1::ContainerState) -> Option<CState> {
    let t = s.terminated.as_ref()?;
    Some(CState::Terminated {
        exit_code: t.exit_code,
        signal: t.signal,
        reason: t.reason.clone(),
        message: t.message.clone(),
        started_at: t.started_at,
        finished_at: t.finished_at.unwrap_or_default(),
        container_id: t.container_id.clone(),
    })
}

/// SIGTERM, the grace period, then SIGKILL to every process.
pub async fn stop_container(ctd: &crate::runtime::Containerd, id: &str, grace: Duration) {
    let _ = ctd.kill(id, 15, false).await;
    if tokio::time::timeout(grace, ctd.wait(id, "")).await.is_err() {
        let _ = ctd.kill(id, 9, true).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), ctd.wait(id, "")).await;
    }
}
