//! `skiff scale` and `skiff rollout status|history|undo|restart`, with
//! kubectl's behaviour and messages.

use std::time::Duration;

use anyhow::{Result, bail};
use futures::StreamExt;
use skiff_api::v1::PodTemplateSpec;
use skiff_api::{Deployment, Kind, Object, ReplicaSet, Resource};
use skiff_client::{Client, ListParams};

use crate::args::{RolloutCommand, ScaleArgs};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// `deployment/web`, `deploy web`, `rs/web-abc`: the kind and name.
fn target(words: &[String], allowed: &[Kind]) -> Result<(Kind, String)> {
    let (kind_word, name) = match words {
        [one] => match one.split_once('/') {
            Some((k, n)) => (k.to_string(), n.to_string()),
            None => bail!("name the object as KIND/NAME or KIND NAME (`deployment/web`)"),
        },
        [k, n] => (k.clone(), n.clone()),
        _ => bail!("name one object as KIND/NAME or KIND NAME (`deployment/web`)"),
    };
    let kind = Kind::parse(&kind_word)
        .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type {kind_word:?}"))?;
    if !allowed.contains(&kind) {
        bail!(
            "{} is not supported here (expected {})",
            kind.qualified_name(),
            allowed
                .iter()
                .map(|k| k.qualified_name())
                .collect::<Vec<_>>()
                .join(" or ")
        );
    }
    Ok((kind, name))
}

pub async fn scale(client: &Client, namespace: Option<&str>, args: &ScaleArgs) -> Result<()> {
    if args.replicas < 0 {
        bail!("--replicas must be 0 or more, not {}", args.replicas);
    }
    let (kind, name) = target(&args.target, &[Kind::Deployment, Kind::ReplicaSet])?;
    let ns = namespace.unwrap_or("default");
    loop {
        let mut obj = client.get_object(kind, ns, &name).await?;
        let current = match &mut obj {
            Object::Deployment(d) => &mut d.spec.get_or_insert_with(Default::default).replicas,
            Object::ReplicaSet(r) => &mut r.spec.get_or_insert_with(Default::default).replicas,
            _ => unreachable!("kinds checked above"),
        };
        if let Some(want) = args.current_replicas
            && current.unwrap_or(1) != want
        {
            bail!(
                "expected replicas to be {want}, was {}",
                current.unwrap_or(1)
            );
        }
        *current = Some(args.replicas);
        match client.update_object(&obj).await {
            Ok(_) => {
                println!("{}/{name} scaled", kind.qualified_name());
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

pub async fn rollout(client: &Client, namespace: Option<&str>, cmd: RolloutCommand) -> Result<()> {
    let ns = namespace.unwrap_or("default").to_string();
    match cmd {
        RolloutCommand::Status {
            target,
            timeout,
            watch,
        } => {
            let (_, name) = target_deployment(&target)?;
            status(client, &ns, &name, watch, timeout.map(Duration::from_secs)).await
        }
        RolloutCommand::History { target, revision } => {
            let (_, name) = target_deployment(&target)?;
            history(client, &ns, &name, revision).await
        }
        RolloutCommand::Undo {
            target,
            to_revision,
        } => {
            let (_, name) = target_deployment(&target)?;
            undo(client, &ns, &name, to_revision).await
        }
        RolloutCommand::Restart { target } => {
            let (_, name) = target_deployment(&target)?;
            restart(client, &ns, &name).await
        }
        RolloutCommand::Pause { target } => {
            let (_, name) = target_deployment(&target)?;
            set_paused(client, &ns, &name, true).await
        }
        RolloutCommand::Resume { target } => {
            let (_, name) = target_deployment(&target)?;
            set_paused(client, &ns, &name, false).await
        }
    }
}

fn target_deployment(words: &[String]) -> Result<(Kind, String)> {
    target(words, &[Kind::Deployment])
}

/// Where a rollout stands: `Ok(None)` done, `Ok(Some(msg))` waiting.
pub fn rollout_state(d: &Deployment) -> Result<Option<String>> {
    let name = d.name();
    let generation = d.meta().generation;
    let st = d.status.clone().unwrap_or_default();
    if st.observed_generation < generation {
        return Ok(Some(
            "Waiting for deployment spec update to be observed...".into(),
        ));
    }
    if st
        .conditions
        .iter()
        .any(|c| c.r#type == "Progressing" && c.reason == "ProgressDeadlineExceeded")
    {
        bail!("deployment {name:?} exceeded its progress deadline");
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if st.updated_replicas < want {
        return Ok(Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} out of {want} new replicas have been updated...",
            st.updated_replicas
        )));
    }
    if st.replicas > st.updated_replicas {
        return Ok(Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            st.replicas - st.updated_replicas
        )));
    }
    if st.available_replicas < st.updated_replicas {
        return Ok(Some(format!(
            "Waiting for deployment {name:?} rollout to finish: {} of {} updated replicas are available...",
            st.available_replicas, st.updated_replicas
        )));
    }
    Ok(None)
}

async fn status(
    client: &Client,
    ns: &str,
    name: &str,
    watch: bool,
    timeout: Option<Duration>,
) -> Result<()> {
    let work = async {
        let mut last = String::new();
        loop {
            let (list, rv) = {
                let d = client.get::<Deployment>(ns, name).await?;
                let rv = d.meta().resource_version.clone();
                (d, rv)
            };
            match rollout_state(&list)? {
                None => {
                    println!("deployment {name:?} successfully rolled out");
                    return Ok(());
                }
                Some(msg) => {
                    if msg != last {
                        println!("{msg}");
                        last = msg;
                    }
                    if !watch {
                        return Ok(());
                    }
                }
            }
            // Wait for the next change of this Deployment (event-driven).
            let mut events = client
                .watch::<Deployment>(ns, &ListParams::default(), Some(&rv))
                .await?;
            loop {
                match events.next().await {
                    Some(Ok(ev)) if ev.object().is_some_and(|d| d.name() == name) => break,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) if e.is_gone() => break,
                    Some(Err(e)) => return Err(e.into()),
                    None => break,
                }
            }
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, work)
            .await
            .map_err(|_| anyhow::anyhow!("timed out waiting for the condition"))?,
        None => work.await,
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.meta()
        .annotations
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The Deployment's ReplicaSets, oldest revision first.
async fn owned(client: &Client, d: &Deployment) -> Result<Vec<ReplicaSet>> {
    let uid = d.meta().uid.clone();
    let mut rss: Vec<ReplicaSet> = client
        .list::<ReplicaSet>(d.namespace(), &ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|rs| {
            rs.meta()
                .owner_references
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .collect();
    rss.sort_by_key(revision);
    Ok(rss)
}

async fn history(client: &Client, ns: &str, name: &str, rev: Option<i64>) -> Result<()> {
    let d = client.get::<Deployment>(ns, name).await?;
    let rss = owned(client, &d).await?;
    if let Some(r) = rev {
        let Some(rs) = rss.iter().find(|rs| revision(rs) == r) else {
            bail!("unable to find the specified revision {r}");
        };
        println!("deployment.apps/{name} with revision #{r}");
        let t = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        print!("{}", serde_yaml_ng::to_string(&serde_json::to_value(&t)?)?);
        return Ok(());
    }
    println!("deployment.apps/{name}");
    println!("REVISION  CHANGE-CAUSE");
    for rs in &rss {
        let cause = rs
            .meta()
            .annotations
            .get(CHANGE_CAUSE)
            .cloned()
            .unwrap_or_else(|| "<none>".into());
        println!("{:<9} {cause}", revision(rs));
    }
    Ok(())
}

/// The template a ReplicaSet runs, as the Deployment would carry it.
fn deployment_template(rs: &ReplicaSet) -> PodTemplateSpec {
    let mut t = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if let Some(m) = t.metadata.as_mut() {
        m.labels.remove(HASH_LABEL);
    }
    t
}

async fn undo(client: &Client, ns: &str, name: &str, to: Option<i64>) -> Result<()> {
    loop {
        let mut d = client.get::<Deployment>(ns, name).await?;
        let rss = owned(client, &d).await?;
        let target = match to.filter(|r| *r != 0) {
            Some(r) => rss.iter().find(|rs| revision(rs) == r).ok_or_else(|| {
                anyhow::anyhow!("unable to find specified revision {r} in history")
            })?,
            None => {
                if rss.len() < 2 {
                    bail!("no rollout history found for deployment {name:?}");
                }
                &rss[rss.len() - 2]
            }
        };
        let template = deployment_template(target);
        // The revision's change cause comes back with it (as kubectl does).
        let cause = target.meta().annotations.get(CHANGE_CAUSE).cloned();
        let annotations = &mut d.meta_mut().annotations;
        match cause {
            Some(c) => annotations.insert(CHANGE_CAUSE.into(), c),
            None => annotations.remove(CHANGE_CAUSE),
        };
        let spec = d.spec.get_or_insert_with(Default::default);
        if spec.template.as_ref() == Some(&template) {
            println!(
                "deployment.apps/{name} skipped rollback (current template already matches revision {})",
                revision(target)
            );
            return Ok(());
        }
        spec.template = Some(template);
        match client.update(&d).await {
            Ok(_) => {
                println!("deployment.apps/{name} rolled back");
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

async fn set_paused(client: &Client, ns: &str, name: &str, paused: bool) -> Result<()> {
    let word = if paused { "paused" } else { "resumed" };
    loop {
        let mut d = client.get::<Deployment>(ns, name).await?;
        let spec = d.spec.get_or_insert_with(Default::default);
        if spec.paused == paused {
            let state = if paused { "paused" } else { "not paused" };
            bail!("deployment.apps/{name} is already {state}");
        }
        spec.paused = paused;
        match client.update(&d).await {
            Ok(_) => {
                println!("deployment.apps/{name} {word}");
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

async fn restart(client: &Client, ns: &str, name: &str) -> Result<()> {
    loop {
        let mut d = client.get::<Deployment>(ns, name).await?;
        if d.spec.as_ref().is_some_and(|s| s.paused) {
            bail!("can't restart paused deployment (run rollout resume first)");
        }
        let now = skiff_api::v1::Time::now_seconds();
        let t = d
            .spec
            .get_or_insert_with(Default::default)
            .template
            .get_or_insert_with(Default::default)
            .metadata
            .get_or_insert_with(Default::default);
        t.annotations.insert(RESTARTED_AT.into(), now.to_rfc3339());
        match client.update(&d).await {
            Ok(_) => {
                println!("deployment.apps/{name} restarted");
                return Ok(());
            }
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
