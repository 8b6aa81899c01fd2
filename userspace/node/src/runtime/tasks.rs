//! Containers and their tasks: create from an OCI runtime spec, start,
//! wait, signal, exec, delete — and list what is there, so a restarted
//! node daemon adopts running tasks instead of restarting them.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{MountsRequest, PrepareSnapshotRequest};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    CloseIoRequest, Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetContainerRequest, KillRequest,
    ListContainersRequest, ListTasksRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use containerd_client::types::v1::Status;
use tonic::Code;

use super::{Containerd, RUNTIME, SNAPSHOTTER, status};

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// What to create a container from.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub id: String,
    pub image: String,
    /// The snapshot the rootfs is prepared from (the image's top chain ID).
    pub parent_snapshot: String,
    /// The OCI runtime spec.
    pub spec: serde_json::Value,
    pub labels: HashMap<String, String>,
}

/// The stdio of an exec'd process: FIFO paths (empty: none).
#[derive(Debug, Clone, Default)]
pub struct ExecIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Stopped,
    Paused,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub container_id: String,
    pub pid: u32,
    pub state: TaskState,
    pub exit_status: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: u32,
    /// Seconds since the epoch (0 when containerd did not say).
    pub at: i64,
}

fn timestamp(t: Option<prost_types::Timestamp>) -> i64 {
    t.map(|t| t.seconds).unwrap_or(0)
}

impl Containerd {
    /// Creates the container and its rootfs snapshot (both named `id`).
    /// Idempotent: an existing container of that id is left as it is.
    pub async fn create_container(&self, c: &ContainerSpec) -> Result<()> {
        let lease = self.lease(Duration::from_secs(600)).await?;
        let r = self.create_container_in(c, &lease).await;
        self.drop_lease(&lease).await;
        r
    }

    async fn create_container_in(&self, c: &ContainerSpec, lease: &str) -> Result<()> {
        let prepared = SnapshotsClient::new(self.channel.clone())
            .prepare(self.req(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: c.id.clone(),
                    parent: c.parent_snapshot.clone(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await;
        match prepared {
            Ok(_) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => return Err(status(s, &format!("preparing the rootfs of {}", c.id))),
        }
        let spec = prost_types::Any {
            type_url: SPEC_TYPE.into(),
            value: serde_json::to_vec(&c.spec)?,
        };
        let container = Container {
            id: c.id.clone(),
            labels: c.labels.clone(),
            image: c.image.clone(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(spec),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: c.id.clone(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        let created = ContainersClient::new(self.channel.clone())
            .create(self.req(
                CreateContainerRequest {
                    container: Some(container),
                },
                Some(lease),
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => {
                self.remove_snapshot(&c.id).await;
                Err(status(s, &format!("creating container {}", c.id)))
            }
        }
    }

    /// Creates the task (the process exists, stopped before exec); `stdio`
    /// is a log URI such as `binary:///path?args` or `file:///path`.
    pub async fn create_task(&self, id: &str, stdio: &str) -> Result<u32> {
        let mounts = SnapshotsClient::new(self.channel.clone())
            .mounts(self.req(
                MountsRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: id.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| status(s, &format!("reading the rootfs mounts of {id}")))?
            .into_inner()
            .mounts;
        let r = TasksClient::new(self.channel.clone())
            .create(self.req(
                CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs: mounts,
                    stdin: String::new(),
                    stdout: stdio.to_string(),
                    stderr: stdio.to_string(),
                    terminal: false,
                    checkpoint: None,
                    options: None,
                    runtime_path: String::new(),
                },
                None,
            ))
            .await
            .map_err(|s| status(s, &format!("creating the task of {id}")))?;
        Ok(r.into_inner().pid)
    }

    pub async fn start_task(&self, id: &str) -> Result<u32> {
        let r = TasksClient::new(self.channel.clone())
            .start(self.req(
                StartRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(|s| status(s, &format!("starting the task of {id}")))?;
        Ok(r.into_inner().pid)
    }

    /// Waits for the task (or, with `exec_id`, an exec'd process) to exit.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ExitStatus> {
        let r = TasksClient::new(self.channel.clone())
            .wait(self.req(
                WaitRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| status(s, &format!("waiting for {id}")))?
            .into_inner();
        Ok(ExitStatus {
            code: r.exit_status,
            at: timestamp(r.exited_at),
        })
    }

    /// Sends a signal to the task's init process (or to all its processes).
    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<()> {
        let r = TasksClient::new(self.channel.clone())
            .kill(self.req(
                KillRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                    signal,
                    all,
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(()),
            // Already gone: nothing to signal.
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(status(s, &format!("signalling {id}"))),
        }
    }

    /// Deletes a stopped task; `None` when there was none.
    pub async fn delete_task(&self, id: &str) -> Result<Option<ExitStatus>> {
        let r = TasksClient::new(self.channel.clone())
            .delete(self.req(
                DeleteTaskRequest {
                    container_id: id.to_string(),
                },
                None,
            ))
            .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                Ok(Some(ExitStatus {
                    code: r.exit_status,
                    at: timestamp(r.exited_at),
                }))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status(s, &format!("deleting the task of {id}"))),
        }
    }

    /// Deletes the container and its rootfs snapshot.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        let r = ContainersClient::new(self.channel.clone())
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }, None))
            .await;
        match r {
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status(s, &format!("deleting container {id}"))),
        }
        self.remove_snapshot(id).await;
        Ok(())
    }

    /// Every task in the namespace.
    pub async fn tasks(&self) -> Result<Vec<TaskInfo>> {
        let list = TasksClient::new(self.channel.clone())
            .list(self.req(
                ListTasksRequest {
                    filter: String::new(),
                },
                None,
            ))
            .await
            .map_err(|s| status(s, "listing tasks"))?
            .into_inner()
            .tasks;
        Ok(list
            .into_iter()
            .map(|p| TaskInfo {
                // containerd 1.6 names an init process by `id` alone.
                container_id: if p.container_id.is_empty() {
                    p.id
                } else {
                    p.container_id
                },
                pid: p.pid,
                state: match Status::try_from(p.status).unwrap_or(Status::Unknown) {
                    Status::Created => TaskState::Created,
                    Status::Running => TaskState::Running,
                    Status::Stopped => TaskState::Stopped,
                    Status::Paused | Status::Pausing => TaskState::Paused,
                    Status::Unknown => TaskState::Unknown,
                },
                exit_status: p.exit_status,
            })
            .collect())
    }

    /// Every container in the namespace with its labels.
    pub async fn containers(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        let list = ContainersClient::new(self.channel.clone())
            .list(self.req(ListContainersRequest { filters: vec![] }, None))
            .await
            .map_err(|s| status(s, "listing containers"))?
            .into_inner()
            .containers;
        Ok(list.into_iter().map(|c| (c.id, c.labels)).collect())
    }

    /// Starts a process inside a running container. `process` is an OCI
    /// Process; stdio are FIFO paths (or empty) the caller has opened.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        io: &ExecIo,
    ) -> Result<u32> {
        let mut tasks = TasksClient::new(self.channel.clone());
        tasks
            .exec(self.req(
                ExecProcessRequest {
                    container_id: id.to_string(),
                    stdin: io.stdin.clone(),
                    stdout: io.stdout.clone(),
                    stderr: io.stderr.clone(),
                    terminal: io.terminal,
                    spec: Some(prost_types::Any {
                        type_url: PROCESS_TYPE.into(),
                        value: serde_json::to_vec(process)?,
                    }),
                    exec_id: exec_id.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| status(s, &format!("exec in {id}")))?;
        let pid = tasks
            .start(self.req(
                StartRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| status(s, &format!("starting exec in {id}")))?
            .into_inner()
            .pid;
        Ok(pid)
    }

    pub async fn kill_exec(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        TasksClient::new(self.channel.clone())
            .kill(self.req(
                KillRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    signal,
                    all: false,
                },
                None,
            ))
            .await
            .map_err(|s| status(s, "signalling an exec'd process"))?;
        Ok(())
    }

    pub async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<()> {
        let r = TasksClient::new(self.channel.clone())
            .delete_process(self.req(
                DeleteProcessRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
                None,
            ))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status(s, "deleting an exec'd process")).context("exec cleanup"),
        }
    }

    /// The OCI runtime spec a container was created with.
    pub async fn container_spec(&self, id: &str) -> Result<serde_json::Value> {
        let c = ContainersClient::new(self.channel.clone())
            .get(self.req(GetContainerRequest { id: id.to_string() }, None))
            .await
            .map_err(|s| status(s, &format!("reading container {id}")))?
            .into_inner()
            .container
            .context("containerd returned no container")?;
        let spec = c.spec.context("the container has no spec")?;
        Ok(serde_json::from_slice(&spec.value)?)
    }

    pub async fn resize_pty(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<()> {
        TasksClient::new(self.channel.clone())
            .resize_pty(self.req(
                ResizePtyRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    width,
                    height,
                },
                None,
            ))
            .await
            .map_err(|s| status(s, "resizing the terminal"))?;
        Ok(())
    }

    /// Closes an exec'd process's stdin (it reads EOF).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        TasksClient::new(self.channel.clone())
            .close_io(self.req(
                CloseIoRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    stdin: true,
                },
                None,
            ))
            .await
            .map_err(|s| status(s, "closing stdin"))?;
        Ok(())
    }
}
