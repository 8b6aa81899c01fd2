//! A pod's status from what the node knows of its containers: phase,
//! conditions, container statuses. Pure, as the kubelet's rules deserve.

use skiff_api::v1::{
    Condition, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, PodIp, PodStatus, Time,
};

/// One container's state, the node's view.
#[derive(Debug, Clone, PartialEq)]
pub enum CState {
    Waiting {
        reason: String,
        message: String,
    },
    Running {
        started_at: Time,
    },
    Terminated {
        exit_code: i32,
        signal: i32,
        reason: String,
        message: String,
        started_at: Option<Time>,
        finished_at: Time,
        container_id: String,
    },
}

impl CState {
    pub fn waiting(reason: &str, message: impl Into<String>) -> CState {
        CState::Waiting {
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    fn to_api(&self) -> ContainerState {
        match self {
            CState::Waiting { reason, message } => ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: reason.clone(),
                    message: message.clone(),
                }),
                ..Default::default()
            },
            CState::Running { started_at } => ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(*started_at),
                }),
                ..Default::default()
            },
            CState::Terminated {
                exit_code,
                signal,
                reason,
                message,
                started_at,
                finished_at,
                container_id,
            } => ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: reason.clone(),
                    message: message.clone(),
                    started_at: *started_at,
                    finished_at: Some(*finished_at),
                    container_id: container_id.clone(),
                }),
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub name: String,
    pub image: String,
    pub image_id: String,
    /// `containerd://<id>` of the current (or last) container.
    pub container_id: String,
    pub state: CState,
    pub last_state: Option<CState>,
    pub restart_count: i32,
    pub ready: bool,
}

impl ContainerView {
    fn has_run(&self) -> bool {
        !matches!(self.state, CState::Waiting { .. }) || self.last_state.is_some()
    }
}

/// The pod phase, by the kubelet's rules.
pub fn phase(views: &[ContainerView], restart_policy: &str) -> &'static str {
    if views.is_empty() {
        return "Pending";
    }
    let never_started = views.iter().filter(|v| !v.has_run()).count();
    let running = views
        .iter()
        .filter(|v| matches!(v.state, CState::Running { .. }))
        .count();
    if never_started > 0 {
        return "Pending";
    }
    if running > 0 {
        return "Running";
    }
    // Every container has stopped (or waits to restart after stopping).
    let exit_of = |v: &ContainerView| match (&v.state, &v.last_state) {
        (CState::Terminated { exit_code, .. }, _) => Some(*exit_code),
        (_, Some(CState::Terminated { exit_code, .. })) => Some(*exit_code),
        _ => None,
    };
    let failed = views
        .iter()
        .filter(|v| exit_of(v).is_some_and(|c| c != 0))
        .count();
    match restart_policy {
        "Never" => {
            if failed > 0 {
                "Failed"
            } else {
                "Succeeded"
            }
        }
        "OnFailure" => {
            if failed > 0 {
                "Running"
            } else {
                "Succeeded"
            }
        }
        _ => "Running",
    }
}

fn condition(prev: Option<&PodStatus>, kind: &str, ok: bool, reason: &str, now: Time) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = prev
        .and_then(|p| p.conditions.iter().find(|c| c.r#type == kind))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time)
        .unwrap_or(now);
    Condition {
        r#type: kind.to_string(),
        status: status.to_string(),
        last_transition_time: Some(since),
        reason: if ok {
            String::new()
        } else {
            reason.to_string()
        },
        ..Default::default()
    }
}

/// Everything about the pod besides its containers.
#[derive(Debug, Clone, Default)]
pub struct PodFacts {
    pub restart_policy: String,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    pub start_time: Option<Time>,
    /// A pod-level failure (the sandbox could not be made), as reason and
    /// message; the containers then wait.
    pub problem: Option<(String, String)>,
}

/// The state of the init containers: all completed, still running through
/// them, or one failed for good (restartPolicy Never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitState {
    Done,
    Running,
    Failed,
}

pub fn init_state(inits: &[ContainerView], restart_policy: &str) -> InitState {
    let exit = |v: &ContainerView| match &v.state {
        CState::Terminated { exit_code, .. } => Some(*exit_code),
        _ => None,
    };
    if inits.iter().all(|v| exit(v) == Some(0)) {
        return InitState::Done;
    }
    if restart_policy == "Never" && inits.iter().any(|v| exit(v).is_some_and(|c| c != 0)) {
        return InitState::Failed;
    }
    InitState::Running
}

pub fn pod_status(
    prev: Option<&PodStatus>,
    inits: &[ContainerView],
    views: &[ContainerView],
    facts: &PodFacts,
    now: Time,
) -> PodStatus {
    let init = init_state(inits, &facts.restart_policy);
    let phase = match init {
        InitState::Done => phase(views, &facts.restart_policy),
        InitState::Running => "Pending",
        InitState::Failed => "Failed",
    };
    let all_ready = !views.is_empty() && views.iter().all(|v| v.ready);
    let not_ready: Vec<&str> = views
        .iter()
        .filter(|v| !v.ready)
        .map(|v| v.name.as_str())
        .collect();
    let mut ready_cond = condition(prev, "Ready", all_ready, "ContainersNotReady", now);
    let mut cr_cond = condition(
        prev,
        "ContainersReady",
        all_ready,
        "ContainersNotReady",
        now,
    );
    if !all_ready {
        let msg = format!("containers with unready status: [{}]", not_ready.join(" "));
        ready_cond.message = msg.clone();
        cr_cond.message = msg;
    }
    let conditions = vec![
        condition(
            prev,
            "PodReadyToStartContainers",
            facts.pod_ip.is_some(),
            "",
            now,
        ),
        condition(
            prev,
            "Initialized",
            init == InitState::Done,
            "ContainersNotInitialized",
            now,
        ),
        ready_cond,
        cr_cond,
        condition(prev, "PodScheduled", true, "", now),
    ];
    let to_status = |v: &ContainerView| ContainerStatus {
        name: v.name.clone(),
        state: Some(v.state.to_api()),
        last_state: Some(
            v.last_state
                .as_ref()
                .map(CState::to_api)
                .unwrap_or_default(),
        ),
        ready: v.ready,
        restart_count: v.restart_count,
        image: v.image.clone(),
        image_id: v.image_id.clone(),
        container_id: v.container_id.clone(),
        started: Some(matches!(v.state, CState::Running { .. })),
    };
    let statuses = views.iter().map(to_status).collect();
    let (reason, message) = facts.problem.clone().unwrap_or_default();
    PodStatus {
        phase: phase.to_string(),
        conditions,
        message,
        reason,
        host_ip: facts.host_ip.clone(),
        pod_ip: facts.pod_ip.clone().unwrap_or_default(),
        pod_ips: facts
            .pod_ip
            .iter()
            .map(|ip| PodIp { ip: ip.clone() })
            .collect(),
        start_time: facts.start_time,
        init_container_statuses: inits.iter().map(to_status).collect(),
        container_statuses: statuses,
        qos_class: prev.map(|p| p.qos_class.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: CState, last: Option<CState>, ready: bool) -> ContainerView {
        ContainerView {
            name: "c".into(),
            image: "busybox".into(),
            image_id: String::new(),
            container_id: String::new(),
            state,
            last_state: last,
            restart_count: 0,
            ready,
        }
    }

    fn exited(code: i32) -> CState {
        CState::Terminated {
            exit_code: code,
            signal: 0,
            reason: if code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            message: String::new(),
            started_at: None,
            finished_at: Time::default(),
            container_id: String::new(),
        }
    }

    fn running() -> CState {
        CState::Running {
            started_at: Time::default(),
        }
    }

    #[test]
    fn phases_follow_the_kubelet() {
        let pulling = view(CState::waiting("ContainerCreating", ""), None, false);
        assert_eq!(phase(std::slice::from_ref(&pulling), "Always"), "Pending");
        assert_eq!(
            phase(&[view(running(), None, true), pulling], "Always"),
            "Pending"
        );
        assert_eq!(phase(&[view(running(), None, true)], "Always"), "Running");
        let backoff = view(
            CState::waiting("CrashLoopBackOff", ""),
            Some(exited(1)),
            false,
        );
        assert_eq!(phase(&[backoff], "Always"), "Running");
        assert_eq!(phase(&[view(exited(0), None, false)], "Never"), "Succeeded");
        assert_eq!(phase(&[view(exited(3), None, false)], "Never"), "Failed");
        assert_eq!(
            phase(&[view(exited(3), None, false)], "OnFailure"),
            "Running"
        );
        assert_eq!(
            phase(&[view(exited(0), None, false)], "OnFailure"),
            "Succeeded"
        );
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let waiting = view(CState::waiting("PodInitializing", ""), None, false);
        assert_eq!(init_state(&[], "Always"), InitState::Done);
        assert_eq!(
            init_state(&[view(exited(0), None, true)], "Always"),
            InitState::Done
        );
        assert_eq!(
            init_state(&[view(running(), None, false)], "Always"),
            InitState::Running
        );
        assert_eq!(
            init_state(&[view(exited(1), None, false)], "OnFailure"),
            InitState::Running
        );
        assert_eq!(
            init_state(&[view(exited(1), None, false)], "Never"),
            InitState::Failed
        );
        let facts = PodFacts {
            restart_policy: "Always".into(),
            ..Default::default()
        };
        let s = pod_status(
            None,
            &[view(running(), None, false)],
            &[waiting],
            &facts,
            Time::default(),
        );
        assert_eq!(s.phase, "Pending");
        let init = s
            .conditions
            .iter()
            .find(|c| c.r#type == "Initialized")
            .unwrap();
        assert_eq!(init.status, "False");
        assert_eq!(s.init_container_statuses.len(), 1);
    }

    #[test]
    fn conditions_keep_their_transition_time() {
        let facts = PodFacts {
            restart_policy: "Always".into(),
            pod_ip: Some("10.244.0.5".into()),
            host_ip: "192.0.2.10".into(),
            ..Default::default()
        };
        let t1 = Time {
            seconds: 100,
            nanos: 0,
        };
        let t2 = Time {
            seconds: 200,
            nanos: 0,
        };
        let s1 = pod_status(None, &[], &[view(running(), None, true)], &facts, t1);
        let ready = |s: &PodStatus| {
            s.conditions
                .iter()
                .find(|c| c.r#type == "Ready")
                .cloned()
                .unwrap()
        };
        assert_eq!(ready(&s1).status, "True");
        let s2 = pod_status(Some(&s1), &[], &[view(running(), None, true)], &facts, t2);
        assert_eq!(
            ready(&s2).last_transition_time,
            Some(t1),
            "unchanged condition keeps its time"
        );
        let s3 = pod_status(Some(&s2), &[], &[view(running(), None, false)], &facts, t2);
        assert_eq!(ready(&s3).status, "False");
        assert_eq!(ready(&s3).last_transition_time, Some(t2));
        assert!(ready(&s3).message.contains("[c]"));
        assert_eq!(s3.pod_ips.len(), 1);
        assert_eq!(s3.phase, "Running");
    }
}
