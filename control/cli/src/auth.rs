//! `skiff auth can-i` and `skiff auth whoami`, as kubectl's: the server
//! answers a SelfSubjectAccessReview (or SelfSubjectRulesReview, or
//! SelfSubjectReview) about the caller.

use anyhow::{Result, bail};
use serde_json::{Value, json};
use skiff_api::Kind;
use skiff_client::Client;

use crate::args::AuthCommand;

/// What `can-i` asks about: a resource (by the names the CLI knows, or as
/// `plural.group`), or a URL.
pub fn attributes(args: &[String], subresource: &str, namespace: &str) -> Result<Value> {
    let (verb, what, name) = match args {
        [verb, what] => (verb, what.as_str(), ""),
        [verb, what, name] => (verb, what.as_str(), name.as_str()),
        _ => bail!("usage: skiff auth can-i VERB TYPE[/NAME] [NAME] | VERB /PATH | --list"),
    };
    if what.starts_with('/') {
        return Ok(json!({"nonResourceAttributes": {"verb": verb, "path": what}}));
    }
    let (what, name) = match what.split_once('/') {
        Some((w, n)) if name.is_empty() => (w, n),
        Some(_) => bail!("give the name once: {what} or {what} NAME"),
        None => (what, name),
    };
    let (resource, group) = match Kind::parse(what) {
        Some(k) => (k.plural().to_string(), k.group().to_string()),
        None if what == "*" => ("*".to_string(), "*".to_string()),
        // Not a kind skiff serves (or a subresource name): as given, with
        // the group after the first dot.
        None => match what.split_once('.') {
            Some((r, g)) => (r.to_string(), g.to_string()),
            None => (what.to_string(), String::new()),
        },
    };
    Ok(json!({"resourceAttributes": {
        "verb": verb,
        "group": group,
        "resource": resource,
        "subresource": subresource,
        "namespace": namespace,
        "name": name,
    }}))
}

fn table(rules: &Value) -> String {
    let mut rows = vec![[
        "Resources".to_string(),
        "Non-Resource URLs".to_string(),
        "Resource Names".to_string(),
        "Verbs".to_string(),
    ]];
    let list = |v: &Value| -> String {
        let items: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        format!("[{}]", items.join(" "))
    };
    for r in rules["resourceRules"].as_array().into_iter().flatten() {
        let groups: Vec<&str> = r["apiGroups"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for res in r["resources"].as_array().into_iter().flatten() {
            let res = res.as_str().unwrap_or("");
            for g in &groups {
                let shown = if g.is_empty() {
                    res.to_string()
                } else {
                    format!("{res}.{g}")
                };
                rows.push([
                    shown,
                    "[]".into(),
                    list(&r["resourceNames"]),
                    list(&r["verbs"]),
                ]);
            }
        }
    }
    for r in rules["nonResourceRules"].as_array().into_iter().flatten() {
        rows.push([
            String::new(),
            list(&r["nonResourceURLs"]),
            "[]".into(),
            list(&r["verbs"]),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

pub async fn run(client: &Client, namespace: Option<&str>, cmd: AuthCommand) -> Result<()> {
    match cmd {
        AuthCommand::CanI {
            args,
            subresource,
            all_namespaces,
            list,
            quiet,
        } => {
            let namespace = if all_namespaces {
                ""
            } else {
                namespace.unwrap_or("default")
            };
            if list {
                if !args.is_empty() {
                    bail!("--list takes no VERB or TYPE");
                }
                let review = json!({
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectRulesReview",
                    "spec": {"namespace": namespace},
                });
                let out = client.review("selfsubjectrulesreviews", &review).await?;
                print!("{}", table(&out["status"]));
                return Ok(());
            }
            let review = json!({
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": attributes(&args, &subresource, namespace)?,
            });
            let out = client.review("selfsubjectaccessreviews", &review).await?;
            let allowed = out["status"]["allowed"].as_bool() == Some(true);
            if !quiet {
                println!("{}", if allowed { "yes" } else { "no" });
            }
            if !allowed {
                std::process::exit(1);
            }
            Ok(())
        }
        AuthCommand::Whoami { output } => {
            let review = json!({
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "SelfSubjectReview",
            });
            let out = client.review("selfsubjectreviews", &review).await?;
            match output.as_deref() {
                Some("json") => println!("{}", serde_json::to_string_pretty(&out)?),
                Some("yaml") => print!("{}", serde_yaml_ng::to_string(&out)?),
                Some(other) => bail!("--output {other:?}: expected json or yaml"),
                None => {
                    let info = &out["status"]["userInfo"];
                    let groups: Vec<&str> = info["groups"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    println!("ATTRIBUTE   VALUE");
                    println!("Username    {}", info["username"].as_str().unwrap_or(""));
                    println!("Groups      [{}]", groups.join(" "));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(l: &[&str]) -> Vec<String> {
        l.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn what_can_i_asks() {
        let a = attributes(&s(&["create", "deploy"]), "", "team").unwrap();
        assert_eq!(a["resourceAttributes"]["resource"], "deployments");
        assert_eq!(a["resourceAttributes"]["group"], "apps");
        let a = attributes(&s(&["get", "pods/web"]), "log", "team").unwrap();
        assert_eq!(a["resourceAttributes"]["name"], "web");
        assert_eq!(a["resourceAttributes"]["subresource"], "log");
        let a = attributes(&s(&["get", "/metrics"]), "", "team").unwrap();
        assert_eq!(a["nonResourceAttributes"]["path"], "/metrics");
        let a = attributes(&s(&["list", "widgets.example.com"]), "", "").unwrap();
        assert_eq!(a["resourceAttributes"]["group"], "example.com");
        assert!(attributes(&s(&["get"]), "", "").is_err());
        assert!(attributes(&s(&["get", "pods/a", "b"]), "", "").is_err());
    }
}
