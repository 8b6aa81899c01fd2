//! The API server over real HTTP and gRPC clients, on the embedded store
//! and on a real etcd.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use skiff_api::v1::{ConfigMap, Pod, Service};
use skiff_api::{Kind, Resource};
use skiff_apiserver::{Config, Running};
use skiff_client::{Client, ListParams, WatchEvent};
use skiff_runtime::Event as InformerEvent;
use skiff_testkit::EtcdServer;

/// A server on TLS (the default), and the admin's HTTP client and
/// credentials for it.
struct TestServer {
    running: Option<Running>,
    config: Config,
    url: String,
    creds: skiff_client::Credentials,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
    _etcd: Option<Arc<EtcdServer>>,
}

impl TestServer {
    async fn embedded() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        Self::start(config, dir, None).await
    }

    async fn on_etcd(etcd: Arc<EtcdServer>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            store: Some(etcd.url()),
            ..Config::default()
        };
        Self::start(config, dir, Some(etcd)).await
    }

    /// Another server on `first`'s etcd, in its cluster: with its token,
    /// so it shares the CAs.
    async fn joining(etcd: Arc<EtcdServer>, first: &TestServer) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            store: Some(etcd.url()),
            token_file: Some(first.config.data_dir.join("token")),
            ..Config::default()
        };
        Self::start(config, dir, Some(etcd)).await
    }

    async fn start(
        config: Config,
        dir: tempfile::TempDir,
        etcd: Option<Arc<EtcdServer>>,
    ) -> TestServer {
        let running = skiff_apiserver::start(config.clone()).await.unwrap();
        let url = running.url();
        let ca = running.ca_pem.clone().expect("a TLS server");
        let admin = running
            .issue_client_certificate("system:admin", &["system:masters"])
            .expect("a client certificate");
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .identity(
                reqwest::Identity::from_pem(
                    format!("{}{}", admin.cert_pem, admin.key_pem).as_bytes(),
                )
                .unwrap(),
            )
            .build()
            .unwrap();
        let creds = skiff_client::Credentials {
            server: url.clone(),
            ca_pem: Some(ca),
            cert_pem: Some(admin.cert_pem),
            key_pem: Some(admin.key_pem),
            ..Default::default()
        };
        TestServer {
            running: Some(running),
            config,
            url,
            creds,
            http,
            _dir: dir,
            _etcd: etcd,
        }
    }

    /// Stops and starts the server on the same store (and port).
    async fn restart(&mut self) {
        let addr = self.running.as_ref().unwrap().addr;
        self.running.take().unwrap().shutdown().await.unwrap();
        let mut config = self.config.clone();
        config.listen = addr;
        self.running = Some(skiff_apiserver::start(config).await.unwrap());
    }

    /// Makes the history a paged list reads from go away: etcd compacts
    /// it; the embedded store keeps its snapshots in memory, so a restart
    /// does.
    async fn forget_history(&mut self) {
        match &self._etcd {
            Some(etcd) => {
                let store =
                    skiff_store::Etcd::connect(&[format!("http://{}", etcd.endpoint)], "/skiff/")
                        .await
                        .unwrap();
                let now = skiff_store::Store::revision(&store).await.unwrap();
                skiff_store::Store::compact(&store, now).await.unwrap();
            }
            None => self.restart().await,
        }
    }

    /// A raw HTTP/1.1 connection as the admin, over TLS.
    async fn raw(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                CertificateDer::from_pem_slice(self.creds.ca_pem.as_ref().unwrap().as_bytes())
                    .unwrap(),
            )
            .unwrap();
        let cert = CertificateDer::from_pem_slice(self.creds.cert_pem.as_ref().unwrap().as_bytes())
            .unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(self.creds.key_pem.as_ref().unwrap().as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let addr = self.running.as_ref().unwrap().addr;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap()
    }

    async fn client(&self) -> Client {
        Client::connect_with(&self.creds).await.unwrap()
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        self.call_as(method, path, ct, body).await
    }

    async fn call_as(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

async fn etcd() -> Option<Arc<EtcdServer>> {
    EtcdServer::start().map(Arc::new)
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::TestServer::embedded().await).await;
                }
            )*
        }
        mod etcd_store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(etcd) = super::etcd().await else { return };
                    super::$name(super::TestServer::on_etcd(etcd).await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    rest_crud_and_kubernetes_errors,
    services_get_addresses_that_stay_theirs,
    status_subresource_and_generation,
    finalizers_and_graceful_pod_deletion,
    watch_resumes_across_a_restart,
    grpc_client_and_informer,
    nodes_get_pod_cidrs_that_stay_theirs,
    dry_runs_check_everything_and_write_nothing,
    patches_of_every_type,
    tables_media_types_and_unknown_paths,
    the_scale_subresource,
    pods_are_evicted,
    watch_timeouts_future_revisions_and_bookmarks,
    lists_in_chunks,
);

/// pods/eviction (what kubectl drain posts): a policy/v1 Eviction deletes
/// the pod with its deleteOptions; a dry run deletes nothing.
async fn pods_are_evicted(s: TestServer) {
    let pods = "/api/v1/namespaces/default/pods";
    let (code, _) = s.call("POST", pods, Some(pod("p", json!({})))).await;
    assert_eq!(code, 201);
    let eviction = |name: &str, options: Value| {
        json!({"apiVersion": "policy/v1", "kind": "Eviction",
               "metadata": {"name": name, "namespace": "default"}, "deleteOptions": options})
    };
    let (code, status) = s
        .call(
            "POST",
            &format!("{pods}/p/eviction"),
            Some(eviction("q", json!({}))),
        )
        .await;
    assert_eq!(code, 400, "{status}");
    let (code, _) = s
        .call(
            "POST",
            &format!("{pods}/p/eviction"),
            Some(eviction("p", json!({"dryRun": ["All"]}))),
        )
        .await;
    assert_eq!(code, 201);
    let (code, _) = s.call("GET", &format!("{pods}/p"), None).await;
    assert_eq!(code, 200, "a dry-run eviction deleted");
    let (code, status) = s
        .call(
            "POST",
            &format!("{pods}/p/eviction"),
            Some(eviction("p", json!({"gracePeriodSeconds": 0}))),
        )
        .await;
    assert_eq!(
        (code, status["status"].as_str()),
        (201, Some("Success")),
        "{status}"
    );
    let (code, _) = s.call("GET", &format!("{pods}/p"), None).await;
    assert_eq!(code, 404);
    let (code, _) = s
        .call(
            "POST",
            &format!("{pods}/gone/eviction"),
            Some(eviction("gone", json!({}))),
        )
        .await;
    assert_eq!(code, 404);
}

/// deployments/scale and replicasets/scale: an autoscaling/v1 Scale that
/// reads and writes spec.replicas (and nothing else), pinned by its
/// resourceVersion when it names one.
async fn the_scale_subresource(s: TestServer) {
    let deploys = "/apis/apps/v1/namespaces/default/deployments";
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"team": "a"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
    let (code, created) = s.call("POST", deploys, Some(d)).await;
    assert_eq!(code, 201, "{created}");
    let (code, sc) = s.call("GET", &format!("{deploys}/web/scale"), None).await;
    assert_eq!(code, 200, "{sc}");
    assert_eq!(
        (sc["kind"].as_str(), sc["apiVersion"].as_str()),
        (Some("Scale"), Some("autoscaling/v1"))
    );
    assert_eq!(sc["spec"]["replicas"], 2);
    assert_eq!(sc["status"]["selector"], "app=web");

    let (code, sc) = s
        .call(
            "PATCH",
            &format!("{deploys}/web/scale"),
            Some(json!({"spec": {"replicas": 5}})),
        )
        .await;
    assert_eq!(code, 200, "{sc}");
    assert_eq!(sc["spec"]["replicas"], 5);
    let (_, live) = s.call("GET", &format!("{deploys}/web"), None).await;
    assert_eq!(live["spec"]["replicas"], 5);
    assert_eq!(
        live["metadata"]["labels"]["team"], "a",
        "only the replicas changed"
    );
    assert_eq!(live["spec"]["template"], created["spec"]["template"]);

    // PUT at a stale resourceVersion is a conflict; at the current one it lands.
    let mut stale = sc.clone();
    stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
    stale["spec"]["replicas"] = json!(1);
    let (code, _) = s
        .call("PUT", &format!("{deploys}/web/scale"), Some(stale))
        .await;
    assert_eq!(code, 409);
    let (_, cur) = s.call("GET", &format!("{deploys}/web/scale"), None).await;
    let mut put = cur.clone();
    put["spec"]["replicas"] = json!(0);
    let (code, sc) = s
        .call("PUT", &format!("{deploys}/web/scale"), Some(put))
        .await;
    assert_eq!(
        (code, sc["spec"]["replicas"].as_i64()),
        (200, Some(0)),
        "{sc}"
    );
    let (code, status) = s
        .call(
            "PATCH",
            &format!("{deploys}/web/scale"),
            Some(json!({"spec": {"replicas": -2}})),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    let (code, _) = s
        .call(
            "PATCH",
            &format!("{deploys}/web/scale?dryRun=All"),
            Some(json!({"spec": {"replicas": 9}})),
        )
        .await;
    assert_eq!(code, 200);
    let (_, live) = s.call("GET", &format!("{deploys}/web/scale"), None).await;
    assert_eq!(live["spec"]["replicas"], 0, "a dry run scaled");

    let (_, apps) = s.call("GET", "/apis/apps/v1", None).await;
    let scale = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (scale["kind"].as_str(), scale["group"].as_str()),
        (Some("Scale"), Some("autoscaling"))
    );
    let (code, _) = s
        .call("GET", "/api/v1/namespaces/default/pods/x/scale", None)
        .await;
    assert_eq!(code, 404);
}

/// What `kubectl get` asks for: a meta.k8s.io Table of the kind's columns,
/// rows carrying PartialObjectMetadata; media types not served are 406 and
/// paths nothing serves a 404 Status.
async fn tables_media_types_and_unknown_paths(s: TestServer) {
    let pods = "/api/v1/namespaces/default/pods";
    let (code, _) = s
        .call("POST", pods, Some(pod("web", json!({"app": "web"}))))
        .await;
    assert_eq!(code, 201);
    let get = |path: String, accept: &'static str| {
        let http = s.http.clone();
        let url = format!("{}{path}", s.url);
        async move {
            let resp = http.get(url).header("accept", accept).send().await.unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
    let (code, t) = get(pods.to_string(), kubectl).await;
    assert_eq!(code, 200, "{t}");
    assert_eq!(
        (t["kind"].as_str(), t["apiVersion"].as_str()),
        (Some("Table"), Some("meta.k8s.io/v1"))
    );
    let columns: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        columns,
        ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
    );
    let row = &t["rows"][0];
    assert_eq!(
        row["cells"].as_array().unwrap()[0..4],
        [json!("web"), json!("0/1"), json!("Pending"), json!("0")]
    );
    assert_eq!(row["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(row["object"]["metadata"]["labels"]["app"], "web");
    let (_, one) = get(format!("{pods}/web?includeObject=Object"), kubectl).await;
    assert_eq!(one["rows"].as_array().unwrap().len(), 1);
    assert_eq!(one["rows"][0]["object"]["kind"], "Pod");
    assert_eq!(
        one["rows"][0]["object"]["spec"]["containers"][0]["name"],
        "c"
    );
    let (_, plain) = get(format!("{pods}/web"), "application/json").await;
    assert_eq!(plain["kind"], "Pod");
    let (code, status) = get(format!("{pods}/web"), "application/yaml").await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (406, Some("NotAcceptable"))
    );
    let (code, status) = get(format!("{pods}?includeObject=Everything"), kubectl).await;
    assert_eq!(code, 400, "{status}");
    // A body in a media type not read is 415, not "malformed JSON".
    let (code, status) = s
        .call_as("POST", pods, "application/cbor", Some(pod("x", json!({}))))
        .await;
    assert_eq!(code, 415, "{status}");

    // A watch in Table form: each event a Table of its one row.
    let resp = s
        .http
        .get(format!("{}{pods}?watch=1", s.url))
        .header("accept", kubectl)
        .send()
        .await
        .unwrap();
    let ev = read_lines(resp, 1).await;
    assert_eq!(ev[0]["type"], "ADDED");
    assert_eq!(ev[0]["object"]["kind"], "Table");
    assert_eq!(ev[0]["object"]["rows"][0]["cells"][0], "web");
    let (code, status) = get(
        format!("{pods}?watch=1&sendInitialEvents=true"),
        "application/json",
    )
    .await;
    assert_eq!(code, 422, "{status}");

    for path in [
        "/foo",
        "/openapi/v3/apis/gadgets/v1",
        "/api/v1/gadgets",
        "/apis/apps/v1/namespaces/a/deployments/d/scale",
    ] {
        let (code, status) = get(path.to_string(), "application/json").await;
        assert_eq!(
            (code, status["kind"].as_str()),
            (404, Some("Status")),
            "{path}: {status}"
        );
    }
    let (code, v) = get("/version".to_string(), "application/json").await;
    assert_eq!(
        (code, v["major"].as_str(), v["minor"].as_str()),
        (200, Some("1"), Some("32"))
    );
    assert!(
        v["gitVersion"].as_str().unwrap().starts_with("v1.32."),
        "{v}"
    );
    let (_, apps) = get("/apis/apps/v1".to_string(), "application/json").await;
    let deploy = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments")
        .unwrap()
        .clone();
    assert_eq!(deploy["categories"], json!(["all"]));
    assert_eq!(deploy["shortNames"], json!(["deploy"]));
}

/// `dryRun=All` on create, update, patch and delete: defaults, validation
/// and allocation checks run, the answer is what would be stored, and the
/// store (objects, allocations, revision) is as before.
async fn dry_runs_check_everything_and_write_nothing(s: TestServer) {
    let svcs = "/api/v1/namespaces/default/services";
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}], "selector": {"app": "web"}}});
    let rev = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (_, list) = s.call("GET", svcs, None).await;
    let before = rev(&list);

    let (code, would) = s
        .call("POST", &format!("{svcs}?dryRun=All"), Some(svc.clone()))
        .await;
    assert_eq!(code, 201, "{would}");
    assert!(
        would["spec"]["clusterIP"]
            .as_str()
            .unwrap()
            .starts_with("10.96."),
        "{would}"
    );
    assert_eq!(would["spec"]["ports"][0]["protocol"], "TCP", "defaults ran");
    assert_eq!(would["metadata"]["resourceVersion"], Value::Null);
    let (code, _) = s.call("GET", &format!("{svcs}/web"), None).await;
    assert_eq!(code, 404, "a dry-run create stores nothing");
    let (_, list) = s.call("GET", svcs, None).await;
    assert_eq!(rev(&list), before, "and makes no revision");
    // Validation runs.
    let mut bad = svc.clone();
    bad["spec"]["ports"][0]["nodePort"] = json!(80);
    let (code, status) = s
        .call("POST", &format!("{svcs}?dryRun=All"), Some(bad))
        .await;
    assert_eq!(code, 422, "{status}");
    let (code, status) = s
        .call("POST", &format!("{svcs}?dryRun=Some"), Some(svc.clone()))
        .await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("supported values: \"All\"")
    );

    // The node port was not taken by the dry run.
    let (code, created) = s.call("POST", svcs, Some(svc.clone())).await;
    assert_eq!(code, 201, "{created}");
    let stored_rev = rev(&created);
    // A dry run sees allocations that are taken.
    let mut other = svc.clone();
    other["metadata"]["name"] = json!("other");
    let (code, status) = s
        .call("POST", &format!("{svcs}?dryRun=All"), Some(other))
        .await;
    assert_eq!(code, 422, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("already allocated"),
        "{status}"
    );

    // Update, patch: the answer shows the change, the store keeps the old.
    let mut changed = created.clone();
    changed["metadata"]["labels"] = json!({"tier": "front"});
    let (code, would) = s
        .call("PUT", &format!("{svcs}/web?dryRun=All"), Some(changed))
        .await;
    assert_eq!(code, 200, "{would}");
    assert_eq!(would["metadata"]["labels"]["tier"], "front");
    assert_eq!(rev(&would), stored_rev);
    let (code, would) = s
        .call(
            "PATCH",
            &format!("{svcs}/web?dryRun=All"),
            Some(json!({"spec": {"ports": [{"port": 80, "nodePort": 30081}]}})),
        )
        .await;
    assert_eq!(code, 200, "{would}");
    assert_eq!(would["spec"]["ports"][0]["nodePort"], 30081);
    let (_, live) = s.call("GET", &format!("{svcs}/web"), None).await;
    assert_eq!(live, created, "dry-run update and patch changed nothing");

    // Delete: answered, not done; its allocations stay.
    let (code, gone) = s
        .call("DELETE", &format!("{svcs}/web?dryRun=All"), None)
        .await;
    assert_eq!(code, 200, "{gone}");
    let (code, status) = s
        .call_as(
            "DELETE",
            &format!("{svcs}/web"),
            "application/json",
            Some(json!({"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"]})),
        )
        .await;
    assert_eq!(code, 200, "{status}");
    let (_, live) = s.call("GET", &format!("{svcs}/web"), None).await;
    assert_eq!(live, created, "dry-run deletes deleted nothing");
    let mut again = svc.clone();
    again["metadata"]["name"] = json!("again");
    let (code, _) = s.call("POST", svcs, Some(again)).await;
    assert_eq!(code, 422, "node port 30080 is still held by web");

    // A pod with a grace period: the dry run marks, the store does not.
    let pods = "/api/v1/namespaces/default/pods";
    let mut p = pod("p", json!({}));
    p["spec"]["nodeName"] = json!("n1");
    let (code, created) = s.call("POST", pods, Some(p)).await;
    assert_eq!(code, 201, "{created}");
    let (code, marked) = s
        .call("DELETE", &format!("{pods}/p?dryRun=All"), None)
        .await;
    assert_eq!(code, 202, "{marked}");
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let (_, live) = s.call("GET", &format!("{pods}/p"), None).await;
    assert_eq!(live, created);
}

/// Strategic merge patch merges containers, ports and env by their keys;
/// JSON patch applies operations all or nothing; other media types are
/// refused.
async fn patches_of_every_type(s: TestServer) {
    let pods = "/api/v1/namespaces/default/pods";
    let mut p = pod("web", json!({"app": "web"}));
    p["spec"]["containers"] = json!([{"name": "web", "image": "nginx:1",
        "ports": [{"containerPort": 80}], "env": [{"name": "A", "value": "1"}]}]);
    let (code, created) = s.call("POST", pods, Some(p)).await;
    assert_eq!(code, 201, "{created}");
    let smp = "application/strategic-merge-patch+json";
    // kubectl set image
    let (code, patched) = s
        .call_as(
            "PATCH",
            &format!("{pods}/web"),
            smp,
            Some(
                json!({"spec": {"$setElementOrder/containers": [{"name": "web"}],
                "containers": [{"name": "web", "image": "nginx:2"}]}}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    let c = &patched["spec"]["containers"][0];
    assert_eq!(c["image"], "nginx:2");
    assert_eq!(c["ports"][0]["containerPort"], 80, "the ports stay: {c}");
    assert_eq!(c["env"], json!([{"name": "A", "value": "1"}]));
    // An env var added, one container added.
    let (code, patched) = s
        .call_as(
            "PATCH",
            &format!("{pods}/web"),
            smp,
            Some(json!({"spec": {"containers": [
                {"name": "web", "env": [{"name": "B", "value": "2"}]},
                {"name": "sidecar", "image": "busybox"}
            ]}})),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    let names: Vec<&str> = patched["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web", "sidecar"]);
    // Without $setElementOrder a new element goes before those the patch
    // did not name, as in Kubernetes.
    assert_eq!(
        patched["spec"]["containers"][0]["env"],
        json!([{"name": "B", "value": "2"}, {"name": "A", "value": "1"}])
    );
    assert_eq!(
        patched["spec"]["containers"][1]["imagePullPolicy"], "Always",
        "defaults ran"
    );
    // A list element without its merge key is refused, naming it.
    let (code, status) = s
        .call_as(
            "PATCH",
            &format!("{pods}/web"),
            smp,
            Some(json!({"spec": {"containers": [{"image": "x"}]}})),
        )
        .await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("merge key: name"),
        "{status}"
    );

    // JSON patch: test then replace; a failing test changes nothing.
    let jp = "application/json-patch+json";
    let (code, patched) = s
        .call_as(
            "PATCH",
            &format!("{pods}/web"),
            jp,
            Some(json!([
                {"op": "test", "path": "/spec/containers/0/image", "value": "nginx:2"},
                {"op": "replace", "path": "/spec/containers/0/image", "value": "nginx:3"},
                {"op": "add", "path": "/metadata/labels/tier", "value": "front"}
            ])),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["spec"]["containers"][0]["image"], "nginx:3");
    assert_eq!(patched["metadata"]["labels"]["tier"], "front");
    let (code, status) = s
        .call_as(
            "PATCH",
            &format!("{pods}/web"),
            jp,
            Some(json!([
                {"op": "remove", "path": "/metadata/labels/tier"},
                {"op": "test", "path": "/spec/containers/0/image", "value": "nginx:1"}
            ])),
        )
        .await;
    assert_eq!(code, 422, "{status}");
    let (_, live) = s.call("GET", &format!("{pods}/web"), None).await;
    assert_eq!(live, patched);

    let (code, status) = s
        .call_as(
            "PATCH",
            &format!("{pods}/web"),
            "application/json",
            Some(json!({})),
        )
        .await;
    assert_eq!(code, 415, "{status}");
    // Server-side apply names its manager.
    let (code, status) = s
        .call_as(
            "PATCH",
            &format!("{pods}/web"),
            "application/apply-patch+yaml",
            Some(json!({})),
        )
        .await;
    assert_eq!(code, 400, "{status}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("fieldManager is required")),
        "{status}"
    );
    let (_, still) = s.call("GET", &format!("{pods}/web"), None).await;
    assert_eq!(still, patched);
}

/// Nodes registering without a podCIDR get a /24 of the cluster CIDR, never
/// one another node holds, kept across updates and restarts, released on
/// deletion; a podCIDR a node brings is claimed too.
async fn nodes_get_pod_cidrs_that_stay_theirs(mut s: TestServer) {
    let nodes = "/api/v1/nodes";
    let node = |name: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    let cidr = |v: &Value| {
        v["spec"]["podCIDR"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let (code, own) = s
        .call(
            "POST",
            nodes,
            Some(json!({"metadata": {"name": "own"}, "spec": {"podCIDR": "10.244.0.0/24"}})),
        )
        .await;
    assert_eq!(code, 201, "{own}");
    let mut seen = std::collections::HashSet::from([cidr(&own)]);
    for i in 0..5 {
        let (code, n) = s.call("POST", nodes, Some(node(&format!("n{i}")))).await;
        assert_eq!(code, 201, "{n}");
        let c = cidr(&n);
        assert!(c.starts_with("10.244.") && c.ends_with(".0/24"), "{c}");
        assert!(seen.insert(c.clone()), "{c} handed out twice");
        assert_eq!(n["spec"]["podCIDRs"], json!([c]));
    }
    // Taken: a node asking for it is refused, naming the field.
    let (code, err) = s
        .call(
            "POST",
            nodes,
            Some(json!({"metadata": {"name": "dup"}, "spec": {"podCIDR": "10.244.0.0/24"}})),
        )
        .await;
    assert_eq!(code, 422, "{err}");
    assert!(err.to_string().contains("spec.podCIDR"), "{err}");
    // Updates keep it, and may not change it.
    let (_, n0) = s.call("GET", &format!("{nodes}/n0"), None).await;
    let (code, kept) = s
        .call(
            "PATCH",
            &format!("{nodes}/n0"),
            Some(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await;
    assert_eq!(code, 200, "{kept}");
    assert_eq!(cidr(&kept), cidr(&n0));
    let (code, _) = s
        .call(
            "PATCH",
            &format!("{nodes}/n0"),
            Some(json!({"spec": {"podCIDR": "10.244.99.0/24"}})),
        )
        .await;
    assert_eq!(code, 422);
    s.restart().await;
    let (_, after) = s.call("GET", &format!("{nodes}/n0"), None).await;
    assert_eq!(cidr(&after), cidr(&n0));
    // Deleting a node frees its podCIDR for the next one.
    let freed = cidr(&n0);
    let (code, _) = s.call("DELETE", &format!("{nodes}/n0"), None).await;
    assert_eq!(code, 200);
    let (_, next) = s.call("POST", nodes, Some(node("n9"))).await;
    assert_eq!(cidr(&next), freed, "the lowest free share is reused");
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

async fn rest_crud_and_kubernetes_errors(s: TestServer) {
    let base = "/api/v1/namespaces/default/pods";
    let (code, created) = s
        .call("POST", base, Some(pod("web", json!({"app": "web"}))))
        .await;
    assert_eq!(code, 201, "{created}");
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!created["metadata"]["uid"].as_str().unwrap().is_empty());
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["spec"]["restartPolicy"], "Always", "defaulted");
    s.call("POST", base, Some(pod("db", json!({"app": "db"}))))
        .await;

    let (code, dup) = s.call("POST", base, Some(pod("web", json!({})))).await;
    assert_eq!((code, dup["reason"].as_str()), (409, Some("AlreadyExists")));

    let (code, got) = s.call("GET", &format!("{base}/web"), None).await;
    assert_eq!(
        (code, &got["metadata"]["resourceVersion"]),
        (200, &json!(rv))
    );
    let (code, missing) = s.call("GET", &format!("{base}/nope"), None).await;
    assert_eq!(
        (code, missing["kind"].as_str(), missing["reason"].as_str()),
        (404, Some("Status"), Some("NotFound"))
    );

    let (_, list) = s
        .call("GET", &format!("{base}?labelSelector=app%3Dweb"), None)
        .await;
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let (_, all) = s
        .call("GET", "/api/v1/pods?fieldSelector=metadata.name%3Ddb", None)
        .await;
    assert_eq!(all["items"][0]["metadata"]["name"], "db");
    let (code, _) = s
        .call("GET", "/api/v1/pods?fieldSelector=spec.color%3Dred", None)
        .await;
    assert_eq!(code, 400, "unknown selectable field");

    // Update at a stale resourceVersion: 409, nothing changes.
    let mut stale = got.clone();
    stale["metadata"]["labels"] = json!({"app": "changed"});
    let (code, _) = s
        .call("PUT", &format!("{base}/web"), Some(stale.clone()))
        .await;
    assert_eq!(code, 200);
    let (code, conflict) = s.call("PUT", &format!("{base}/web"), Some(stale)).await;
    assert_eq!((code, conflict["reason"].as_str()), (409, Some("Conflict")));

    // Merge patch.
    let (code, patched) = s
        .call(
            "PATCH",
            &format!("{base}/web"),
            Some(json!({"metadata": {"labels": {"tier": "fe"}}})),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        patched["metadata"]["labels"],
        json!({"app": "changed", "tier": "fe"})
    );

    // Invalid objects: 422 naming the fields; nothing stored.
    let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad"},
                     "spec": {"ports": [{"port": 70000}, {"port": 80, "name": "x"}]}});
    let (code, err) = s
        .call("POST", "/api/v1/namespaces/default/services", Some(bad))
        .await;
    assert_eq!(
        (code, err["reason"].as_str()),
        (422, Some("Invalid")),
        "{err}"
    );
    let fields: Vec<&str> = err["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"spec.ports[0].port") && fields.contains(&"spec.ports[0].name"),
        "{fields:?}"
    );
    let (code, _) = s
        .call("GET", "/api/v1/namespaces/default/services/bad", None)
        .await;
    assert_eq!(code, 404, "an invalid object is not stored");

    // A missing namespace, a malformed body, an oversized object.
    let (code, err) = s
        .call(
            "POST",
            "/api/v1/namespaces/nowhere/pods",
            Some(pod("p", json!({}))),
        )
        .await;
    assert_eq!(code, 404, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("namespaces \"nowhere\" not found")
    );
    let resp = s
        .http
        .post(format!("{}{base}", s.url))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let big = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"blob": "x".repeat(1_600_000)}});
    let (code, err) = s
        .call("POST", "/api/v1/namespaces/default/configmaps", Some(big))
        .await;
    assert_eq!(code, 413, "{err}");
    let (code, _) = s
        .call("GET", "/api/v1/namespaces/default/configmaps/big", None)
        .await;
    assert_eq!(code, 404);

    // Unknown fields are accepted with a warning header naming them.
    let resp = s
        .http
        .post(format!("{}/api/v1/namespaces/default/configmaps", s.url))
        .header("content-type", "application/json")
        .body(json!({"metadata": {"name": "cm"}, "data": {"a": "b"}, "surprise": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let warning = resp
        .headers()
        .get("warning")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(warning.contains("surprise"), "{warning}");

    // Delete.
    let (code, _) = s.call("DELETE", &format!("{base}/db"), None).await;
    assert_eq!(code, 200);
    let (code, _) = s.call("GET", &format!("{base}/db"), None).await;
    assert_eq!(code, 404);
    let (code, _) = s.call("DELETE", "/api/v1/namespaces/default", None).await;
    assert_eq!(code, 403, "the default namespace stays");

    // Health, readiness, metrics, discovery.
    assert_eq!(s.call("GET", "/healthz", None).await.0, 200);
    assert_eq!(s.call("GET", "/readyz", None).await.0, 200);
    let (_, metrics) = s.call("GET", "/metrics", None).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("skiff_apiserver_requests_total"),
        "{metrics}"
    );
    let (_, apis) = s.call("GET", "/apis", None).await;
    assert!(
        apis["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["name"] == "apps")
    );
}

async fn services_get_addresses_that_stay_theirs(mut s: TestServer) {
    let svcs = "/api/v1/namespaces/default/services";
    let svc = |name: &str, extra: Value| {
        let mut v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                           "spec": {"type": "NodePort", "ports": [{"port": 80}], "selector": {"app": name}}});
        skiff_api::patch::merge_patch(&mut v, &extra);
        v
    };
    // Many at once: all addresses and node ports distinct.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (http, url, body) = (
            s.http.clone(),
            format!("{}{svcs}", s.url),
            svc(&format!("s{i}"), json!({})),
        );
        tasks.push(tokio::spawn(async move {
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201);
            resp.json::<Value>().await.unwrap()
        }));
    }
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        let ip = v["spec"]["clusterIP"].as_str().unwrap().to_string();
        assert!(ip.starts_with("10.96."), "{ip}");
        assert!(ips.insert(ip));
        assert!(ports.insert(v["spec"]["ports"][0]["nodePort"].as_i64().unwrap()));
    }

    // Explicit requests: honoured; taken, out of range: refused by field.
    let (code, dns) = s
        .call(
            "POST",
            svcs,
            Some(svc(
                "dns",
                json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10"}}),
            )),
        )
        .await;
    assert_eq!(
        (code, dns["spec"]["clusterIP"].as_str()),
        (201, Some("10.96.0.10"))
    );
    let (code, err) = s
        .call(
            "POST",
            svcs,
            Some(svc(
                "dns2",
                json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10"}}),
            )),
        )
        .await;
    assert_eq!(code, 422);
    assert!(
        err["message"].as_str().unwrap().contains(
            "spec.clusterIP: Invalid value: \"10.96.0.10\": provided IP is already allocated"
        ),
        "{err}"
    );
    let (code, err) = s
        .call(
            "POST",
            svcs,
            Some(svc("far", json!({"spec": {"clusterIP": "192.168.0.1"}}))),
        )
        .await;
    assert_eq!(code, 422);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("not in the valid range"),
        "{err}"
    );
    let taken = ports.iter().next().copied().unwrap();
    let (code, err) = s
        .call(
            "POST",
            svcs,
            Some(svc(
                "np",
                json!({"spec": {"ports": [{"port": 80, "nodePort": taken}]}}),
            )),
        )
        .await;
    assert_eq!(code, 422, "{err}");
    let (code, _) = s
        .call(
            "POST",
            svcs,
            Some(svc(
                "np2",
                json!({"spec": {"ports": [{"port": 80, "nodePort": 80}]}}),
            )),
        )
        .await;
    assert_eq!(code, 422);

    // An update that leaves the addresses out keeps them; a change is refused.
    let (_, s0) = s.call("GET", &format!("{svcs}/s0"), None).await;
    let (code, kept) = s
        .call(
            "PUT",
            &format!("{svcs}/s0"),
            Some(svc("s0", json!({"metadata": {"labels": {"v": "2"}}}))),
        )
        .await;
    assert_eq!(code, 200, "{kept}");
    assert_eq!(kept["spec"]["clusterIP"], s0["spec"]["clusterIP"]);
    assert_eq!(
        kept["spec"]["ports"][0]["nodePort"],
        s0["spec"]["ports"][0]["nodePort"]
    );
    let (code, _) = s
        .call(
            "PATCH",
            &format!("{svcs}/s0"),
            Some(json!({"spec": {"clusterIP": "10.96.77.77"}})),
        )
        .await;
    assert_eq!(code, 422, "clusterIP is immutable");

    // Deleting frees the address; a restart forgets nothing.
    s.call("DELETE", &format!("{svcs}/dns"), None).await;
    let (code, _) = s
        .call(
            "POST",
            svcs,
            Some(svc(
                "dns3",
                json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10"}}),
            )),
        )
        .await;
    assert_eq!(code, 201);
    s.restart().await;
    let (code, err) = s
        .call(
            "POST",
            svcs,
            Some(svc(
                "dns4",
                json!({"spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10"}}),
            )),
        )
        .await;
    assert_eq!(code, 422, "still allocated after a restart: {err}");
    let (_, again) = s.call("GET", &format!("{svcs}/s0"), None).await;
    assert_eq!(again["spec"]["clusterIP"], s0["spec"]["clusterIP"]);
}

async fn status_subresource_and_generation(s: TestServer) {
    let path = "/apis/apps/v1/namespaces/default/deployments";
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        "status": {"replicas": 9}});
    let (code, created) = s.call("POST", path, Some(dep)).await;
    assert_eq!(code, 201, "{created}");
    assert!(
        created.get("status").is_none(),
        "status is the controllers' to write"
    );
    assert_eq!(created["spec"]["replicas"], 1);
    assert_eq!(
        created["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
        "25%"
    );

    let mut with_status = created.clone();
    with_status["status"] = json!({"replicas": 3, "readyReplicas": 2});
    with_status["spec"]["replicas"] = json!(5);
    let (code, st) = s
        .call(
            "PUT",
            &format!("{path}/web/status"),
            Some(with_status.clone()),
        )
        .await;
    assert_eq!(code, 200, "{st}");
    assert_eq!(
        (
            st["status"]["replicas"].as_i64(),
            st["spec"]["replicas"].as_i64()
        ),
        (Some(3), Some(1)),
        "status update leaves the spec"
    );
    assert_eq!(st["metadata"]["generation"], 1);

    let mut scaled = st.clone();
    scaled["spec"]["replicas"] = json!(4);
    scaled["status"] = json!({});
    let (code, up) = s.call("PUT", &format!("{path}/web"), Some(scaled)).await;
    assert_eq!(code, 200);
    assert_eq!(
        (
            up["spec"]["replicas"].as_i64(),
            up["status"]["replicas"].as_i64()
        ),
        (Some(4), Some(3)),
        "spec update leaves the status"
    );
    assert_eq!(
        up["metadata"]["generation"], 2,
        "a spec change bumps the generation"
    );

    let (code, same) = s
        .call("PUT", &format!("{path}/web"), Some(up.clone()))
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        same["metadata"]["resourceVersion"], up["metadata"]["resourceVersion"],
        "a no-op update writes nothing"
    );

    let mismatch = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"app": "a"}},
                 "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let (code, err) = s.call("POST", path, Some(mismatch)).await;
    assert_eq!(code, 422);
    assert_eq!(
        err["details"]["causes"][0]["field"],
        "spec.template.metadata.labels"
    );
}

async fn finalizers_and_graceful_pod_deletion(s: TestServer) {
    let cms = "/api/v1/namespaces/default/configmaps";
    let cm = json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}, "data": {"k": "v"}});
    assert_eq!(s.call("POST", cms, Some(cm)).await.0, 201);
    let (code, marked) = s.call("DELETE", &format!("{cms}/held"), None).await;
    assert_eq!(code, 202);
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let (code, still) = s.call("GET", &format!("{cms}/held"), None).await;
    assert_eq!(code, 200, "kept while a finalizer remains");
    let (code, _) = s
        .call(
            "PATCH",
            &format!("{cms}/held"),
            Some(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        s.call("GET", &format!("{cms}/held"), None).await.0,
        404,
        "gone with the last finalizer ({still})"
    );

    let pods = "/api/v1/namespaces/default/pods";
    let mut p = pod("bound", json!({}));
    p["spec"]["nodeName"] = json!("node-1");
    assert_eq!(s.call("POST", pods, Some(p)).await.0, 201);
    let (code, terminating) = s.call("DELETE", &format!("{pods}/bound"), None).await;
    assert_eq!(code, 202);
    assert_eq!(terminating["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(
        s.call("GET", &format!("{pods}/bound"), None).await.0,
        200,
        "the node gets its grace period"
    );
    let (code, _) = s
        .call(
            "DELETE",
            &format!("{pods}/bound?gracePeriodSeconds=0"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(s.call("GET", &format!("{pods}/bound"), None).await.0, 404);

    // Propagation policies mark the object with their finalizer (the
    // garbage collector removes it); a bound pod whose finalizer goes still
    // waits for its node.
    let mut p = pod("fg", json!({}));
    p["spec"]["nodeName"] = json!("node-1");
    assert_eq!(s.call("POST", pods, Some(p)).await.0, 201);
    let (code, marked) = s
        .call(
            "DELETE",
            &format!("{pods}/fg?propagationPolicy=Foreground"),
            None,
        )
        .await;
    assert_eq!(code, 202);
    assert_eq!(
        marked["metadata"]["finalizers"],
        json!(["foregroundDeletion"])
    );
    let unfinalize = json!({"metadata": {"finalizers": null}});
    let (code, _) = s
        .call("PATCH", &format!("{pods}/fg"), Some(unfinalize.clone()))
        .await;
    assert_eq!(code, 200);
    assert_eq!(
        s.call("GET", &format!("{pods}/fg"), None).await.0,
        200,
        "the node has not confirmed yet"
    );
    let (code, _) = s
        .call("DELETE", &format!("{pods}/fg?gracePeriodSeconds=0"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(s.call("GET", &format!("{pods}/fg"), None).await.0, 404);
    assert_eq!(
        s.call("POST", cms, Some(json!({"metadata": {"name": "orph"}})))
            .await
            .0,
        201
    );
    let (code, marked) = s
        .call(
            "DELETE",
            &format!("{cms}/orph"),
            Some(json!({"propagationPolicy": "Orphan"})),
        )
        .await;
    assert_eq!(code, 202);
    assert_eq!(marked["metadata"]["finalizers"], json!(["orphan"]));
    let (code, _) = s
        .call("PATCH", &format!("{cms}/orph"), Some(unfinalize))
        .await;
    assert_eq!(code, 200);
    assert_eq!(s.call("GET", &format!("{cms}/orph"), None).await.0, 404);
    let (code, err) = s
        .call(
            "DELETE",
            &format!("{cms}/x?propagationPolicy=Sideways"),
            None,
        )
        .await;
    assert_eq!(code, 400, "{err}");

    // A namespace goes with its content.
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "tmp"}}))
        )
        .await
        .0,
        201
    );
    assert_eq!(
        s.call(
            "POST",
            "/api/v1/namespaces/tmp/configmaps",
            Some(json!({"metadata": {"name": "a"}}))
        )
        .await
        .0,
        201
    );
    let (code, ns) = s.call("DELETE", "/api/v1/namespaces/tmp", None).await;
    assert_eq!(
        (code, ns["status"]["phase"].as_str()),
        (202, Some("Terminating"))
    );
    let (code, err) = s
        .call(
            "POST",
            "/api/v1/namespaces/tmp/configmaps",
            Some(json!({"metadata": {"name": "b"}})),
        )
        .await;
    assert_eq!(
        code, 403,
        "no new content in a terminating namespace: {err}"
    );
    for _ in 0..100 {
        if s.call("GET", "/api/v1/namespaces/tmp", None).await.0 == 404 {
            assert_eq!(
                s.call("GET", "/api/v1/namespaces/tmp/configmaps/a", None)
                    .await
                    .0,
                404
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("namespace tmp was not removed");
}

async fn read_lines(resp: reqwest::Response, n: usize) -> Vec<Value> {
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("watch line")
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out.push(serde_json::from_slice(&line).unwrap());
        }
    }
    out
}

async fn watch_resumes_across_a_restart(mut s: TestServer) {
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, a) = s
        .call(
            "POST",
            cms,
            Some(json!({"metadata": {"name": "a", "labels": {"w": "1"}}})),
        )
        .await;
    let rv_a = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.call(
        "POST",
        cms,
        Some(json!({"metadata": {"name": "b", "labels": {"w": "1"}}})),
    )
    .await;

    // Without a resourceVersion: current state first, then changes.
    let resp = s
        .http
        .get(format!("{}{cms}?watch=1&labelSelector=w%3D1", s.url))
        .send()
        .await
        .unwrap();
    let initial = read_lines(resp, 2).await;
    assert_eq!(
        initial
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["ADDED", "ADDED"]
    );

    // Leaving a selection is a DELETED for that watcher.
    let resp = s
        .http
        .get(format!(
            "{}{cms}?watch=1&labelSelector=w%3D1&resourceVersion={rv_a}",
            s.url
        ))
        .send()
        .await
        .unwrap();
    s.call(
        "PATCH",
        &format!("{cms}/a"),
        Some(json!({"metadata": {"labels": {"w": "2"}}})),
    )
    .await;
    s.call("DELETE", &format!("{cms}/b"), None).await;
    let events = read_lines(resp, 3).await;
    let seen: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, [("ADDED", "b"), ("DELETED", "a"), ("DELETED", "b")]);
    let last_rv = events[2]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // After a restart, a watch from a known revision misses nothing.
    s.restart().await;
    s.call(
        "POST",
        cms,
        Some(json!({"metadata": {"name": "c", "labels": {"w": "1"}}})),
    )
    .await;
    let resp = s
        .http
        .get(format!("{}{cms}?watch=1&resourceVersion={rv_a}", s.url))
        .send()
        .await
        .unwrap();
    let replay = read_lines(resp, 4).await;
    let names: Vec<_> = replay
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(names, ["ADDED b", "MODIFIED a", "DELETED b", "ADDED c"]);
    let resp = s
        .http
        .get(format!("{}{cms}?watch=1&resourceVersion={last_rv}", s.url))
        .send()
        .await
        .unwrap();
    let after = read_lines(resp, 1).await;
    assert_eq!(after[0]["object"]["metadata"]["name"], "c");
}

async fn grpc_client_and_informer(s: TestServer) {
    let client = s.client().await;
    let cm = ConfigMap {
        metadata: Some(skiff_api::ObjectMeta {
            name: "g1".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        data: [("k".to_string(), "v".to_string())].into(),
        ..Default::default()
    };
    let created = client.create(&cm).await.unwrap();
    assert_eq!(created.meta().generation, 1);
    assert!(client.create(&cm).await.unwrap_err().is_already_exists());
    let mut stale = created.clone();
    let mut fresh = created.clone();
    fresh.data.insert("k".into(), "v2".into());
    let updated = client.update(&fresh).await.unwrap();
    stale.data.insert("k".into(), "v3".into());
    assert!(client.update(&stale).await.unwrap_err().is_conflict());
    assert_eq!(
        client.get::<ConfigMap>("default", "g1").await.unwrap(),
        updated
    );
    let err = client
        .create(&Service {
            metadata: Some(skiff_api::ObjectMeta {
                name: "x".into(),
                ..Default::default()
            }),
            spec: Some(skiff_api::v1::ServiceSpec {
                ports: vec![skiff_api::v1::ServicePort {
                    port: 0,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), 422);
    let skiff_client::ClientError::Api { causes, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        causes.iter().any(|c| c.starts_with("spec.ports[0].port:")),
        "{causes:?}"
    );

    // A typed watch.
    let mut w = client
        .watch::<ConfigMap>(
            "default",
            &ListParams::default(),
            Some(&updated.meta().resource_version),
        )
        .await
        .unwrap();
    client.delete::<ConfigMap>("default", "g1").await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev, WatchEvent::Deleted(ref o) if o.name() == "g1"),
        "{ev:?}"
    );

    // The informer: synced list, then adds, updates, deletes.
    let (mut cache, mut events, task) =
        skiff_runtime::reflect::<Pod>(client.clone(), "default", ListParams::default());
    cache.wait_synced().await;
    assert!(matches!(next(&mut events).await, InformerEvent::Synced));
    let p: Pod = serde_json::from_value(pod("inf", json!({"a": "1"}))).unwrap();
    let mut p = client.create(&p).await.unwrap();
    assert!(matches!(next(&mut events).await, InformerEvent::Added(ref o) if o.name() == "inf"));
    p.meta_mut().labels.insert("a".into(), "2".into());
    client.update(&p).await.unwrap();
    assert!(
        matches!(next(&mut events).await, InformerEvent::Updated { ref old, ref new } if old.meta().labels["a"] == "1" && new.meta().labels["a"] == "2")
    );
    assert_eq!(cache.get("default", "inf").unwrap().meta().labels["a"], "2");
    client.delete::<Pod>("default", "inf").await.unwrap();
    assert!(matches!(next(&mut events).await, InformerEvent::Deleted(_)));
    assert!(cache.get("default", "inf").is_none());
    task.abort();
    assert_eq!(Kind::Pod, Pod::KIND);
}

async fn next(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<InformerEvent<Pod>>,
) -> InformerEvent<Pod> {
    tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap()
}

/// Two API servers on one etcd never hand out one address twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_etcd_share_allocations() {
    let Some(etcd) = etcd().await else { return };
    let a = TestServer::on_etcd(etcd.clone()).await;
    let b = TestServer::joining(etcd, &a).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (url, http) = if i % 2 == 0 {
            (a.url.clone(), a.http.clone())
        } else {
            (b.url.clone(), b.http.clone())
        };
        tasks.push(tokio::spawn(async move {
            let body = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("s{i}")},
                              "spec": {"type": "NodePort", "ports": [{"port": 80}]}});
            let resp = http.post(format!("{url}/api/v1/namespaces/default/services")).header("content-type", "application/json").body(body.to_string()).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 201);
            resp.json::<Value>().await.unwrap()
        }));
    }
    let mut ips = std::collections::HashSet::new();
    let mut ports = std::collections::HashSet::new();
    for t in tasks {
        let v = t.await.unwrap();
        assert!(
            ips.insert(v["spec"]["clusterIP"].as_str().unwrap().to_string()),
            "duplicate ClusterIP"
        );
        assert!(
            ports.insert(v["spec"]["ports"][0]["nodePort"].as_i64().unwrap()),
            "duplicate NodePort"
        );
    }
    // Each server sees the other's writes (and the one `kubernetes`
    // Service both keep).
    let (_, list) = b
        .call("GET", "/api/v1/namespaces/default/services", None)
        .await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names.len(), 31, "{names:?}");
    assert!(names.contains(&"kubernetes"), "{names:?}");
}

/// Updates at a resourceVersion the watch cache holds start from the
/// cache's copy without reading the store; the compare-and-set still
/// decides. With two servers on one etcd, one's cache can be behind the
/// other's writes: a stale version is refused all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_from_the_watch_cache_keep_compare_and_set() {
    let Some(etcd) = etcd().await else { return };
    let a = TestServer::on_etcd(etcd.clone()).await;
    let b = TestServer::joining(etcd, &a).await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let rv_of = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Seen by A's cache (a watch on A, which its cache serves, delivers it).
    let (code, made) = a
        .call(
            "POST",
            cms,
            Some(json!({"metadata": {"name": "cas"}, "data": {"v": "1"}})),
        )
        .await;
    assert_eq!(code, 201, "{made}");
    let rv1 = rv_of(&made);
    let seen = |s: &TestServer, after: String| {
        let req = s
            .http
            .get(format!("{}{cms}?watch=1&resourceVersion={after}", s.url));
        async move { read_lines(req.send().await.unwrap(), 1).await.remove(0) }
    };
    let first_rv: i64 = rv1.parse().unwrap();
    let ev = seen(&a, (first_rv - 1).to_string()).await;
    assert_eq!(rv_of(&ev["object"]), rv1);
    // B changes it; A's cache may still hold rv1 as the newest.
    let mut via_b = made.clone();
    via_b["data"]["v"] = json!("2");
    let (code, changed) = b.call("PUT", &format!("{cms}/cas"), Some(via_b)).await;
    assert_eq!(code, 200, "{changed}");
    let rv2 = rv_of(&changed);
    // An update at rv1 through A is a conflict, whatever A's cache holds.
    let mut stale = made.clone();
    stale["data"]["v"] = json!("stale");
    let (code, body) = a.call("PUT", &format!("{cms}/cas"), Some(stale)).await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (409, Some("Conflict")),
        "{body}"
    );
    // Once A's cache has rv2, an update at rv2 through A goes through.
    let ev = seen(&a, rv1.clone()).await;
    assert_eq!(rv_of(&ev["object"]), rv2);
    let mut fresh = changed.clone();
    fresh["data"]["v"] = json!("3");
    let (code, body) = a.call("PUT", &format!("{cms}/cas"), Some(fresh)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["v"], "3");
    let (_, live) = b.call("GET", &format!("{cms}/cas"), None).await;
    assert_eq!(live["data"]["v"], "3");
    assert_eq!(rv_of(&live), rv_of(&body));
    // The same version again is now stale.
    let (code, _) = a.call("PUT", &format!("{cms}/cas"), Some(changed)).await;
    assert_eq!(code, 409);
}

/// A watch from before a compaction gets 410 Gone, the cue to relist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_compacted_history_is_gone() {
    let Some(etcd) = etcd().await else { return };
    let s = TestServer::on_etcd(etcd.clone()).await;
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, first) = s
        .call("POST", cms, Some(json!({"metadata": {"name": "a"}})))
        .await;
    let old_rv: i64 = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    for i in 0..5 {
        s.call(
            "PATCH",
            &format!("{cms}/a"),
            Some(json!({"data": {"i": i.to_string()}})),
        )
        .await;
    }
    let store = skiff_store::Etcd::connect(&[format!("http://{}", etcd.endpoint)], "/skiff/")
        .await
        .unwrap();
    let now = skiff_store::Store::revision(&store).await.unwrap();
    skiff_store::Store::compact(&store, now).await.unwrap();
    // Restart so the watch cache cannot serve the old revision.
    let s = {
        let mut s = s;
        s.restart().await;
        s
    };
    let resp = s
        .http
        .get(format!("{}{cms}?watch=1&resourceVersion={}", s.url, old_rv))
        .send()
        .await
        .unwrap();
    let events = read_lines(resp, 1).await;
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410, "{}", events[0]);
}

/// An informer survives its server going away: it resumes its watch from
/// the last resourceVersion, and when that history was compacted meanwhile
/// it relists and reports exactly the differences.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informer_resumes_and_relists_across_restarts() {
    let Some(etcd) = etcd().await else { return };
    let mut a = TestServer::on_etcd(etcd.clone()).await;
    let b = TestServer::joining(etcd.clone(), &a).await;
    let via_b = b.client().await;
    let cm = |name: &str, v: &str| ConfigMap {
        metadata: Some(skiff_api::ObjectMeta {
            name: name.into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        data: [("v".to_string(), v.to_string())].into(),
        ..Default::default()
    };
    via_b.create(&cm("keep", "1")).await.unwrap();
    via_b.create(&cm("change", "1")).await.unwrap();
    via_b.create(&cm("drop", "1")).await.unwrap();

    let (cache, mut events, task) =
        skiff_runtime::reflect::<ConfigMap>(a.client().await, "default", ListParams::default());
    let mut seen = Vec::new();
    while !matches!(seen.last(), Some(InformerEvent::Synced)) {
        seen.push(next_cm(&mut events).await);
    }
    assert_eq!(cache.len(), 3);

    // Server A restarts: the informer resumes and misses nothing.
    a.restart().await;
    via_b.create(&cm("during", "1")).await.unwrap();
    assert!(
        matches!(next_cm(&mut events).await, InformerEvent::Added(ref o) if o.name() == "during")
    );

    // Server A goes down, changes happen, history is compacted: on return
    // the informer is told its revision is gone (410), relists, and gets
    // the differences only.
    let addr = a.running.as_ref().unwrap().addr;
    a.running.take().unwrap().shutdown().await.unwrap();
    let mut changed = via_b.get::<ConfigMap>("default", "change").await.unwrap();
    changed.data.insert("v".into(), "2".into());
    via_b.update(&changed).await.unwrap();
    via_b.delete::<ConfigMap>("default", "drop").await.unwrap();
    via_b.create(&cm("new", "1")).await.unwrap();
    let store = skiff_store::Etcd::connect(&[format!("http://{}", etcd.endpoint)], "/skiff/")
        .await
        .unwrap();
    let now = skiff_store::Store::revision(&store).await.unwrap();
    skiff_store::Store::compact(&store, now).await.unwrap();
    let mut config = a.config.clone();
    config.listen = addr;
    a.running = Some(skiff_apiserver::start(config).await.unwrap());

    let mut after = Vec::new();
    while !matches!(after.last(), Some(InformerEvent::Synced)) {
        after.push(next_cm(&mut events).await);
    }
    let mut summary: Vec<String> = after
        .iter()
        .map(|e| match e {
            InformerEvent::Added(o) => format!("added {}", o.name()),
            InformerEvent::Updated { new, .. } => {
                format!("updated {} v={}", new.name(), new.data["v"])
            }
            InformerEvent::Deleted(o) => format!("deleted {}", o.name()),
            InformerEvent::Synced => "synced".into(),
        })
        .collect();
    // Synced last; the differences in any order.
    assert_eq!(summary.pop().as_deref(), Some("synced"));
    summary.sort();
    assert_eq!(summary, ["added new", "deleted drop", "updated change v=2"]);
    let mut names: Vec<String> = cache.list().iter().map(|c| c.name().to_string()).collect();
    names.sort();
    assert_eq!(names, ["change", "during", "keep", "new"]);
    task.abort();
}

async fn next_cm(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<InformerEvent<ConfigMap>>,
) -> InformerEvent<ConfigMap> {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .expect("informer event within 30 s")
        .unwrap()
}

fn watch_lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn rv_of(v: &Value) -> i64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Watches end at `timeoutSeconds` (validated), with a bookmark last when
/// asked for; a resourceVersion the server has not reached is waited for a
/// bounded time, then refused as kube-apiserver does; gRPC watches alike.
async fn watch_timeouts_future_revisions_and_bookmarks(s: TestServer) {
    let cms = "/api/v1/namespaces/default/configmaps";
    let (_, a) = s
        .call("POST", cms, Some(json!({"metadata": {"name": "a"}})))
        .await;
    let rv_a = rv_of(&a);

    for bad in ["-1", "soon"] {
        let (code, body) = s
            .call("GET", &format!("{cms}?watch=1&timeoutSeconds={bad}"), None)
            .await;
        assert_eq!(code, 400, "timeoutSeconds={bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains("timeoutSeconds"));
    }

    // The watch ends by itself; what happened meanwhile comes first, the
    // bookmark last, at a revision that covers it.
    let started = std::time::Instant::now();
    let resp = s
        .http
        .get(format!(
            "{}{cms}?watch=1&resourceVersion={rv_a}&timeoutSeconds=2&allowWatchBookmarks=true",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, b) = s
        .call("POST", cms, Some(json!({"metadata": {"name": "b"}})))
        .await;
    let body = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .expect("the watch ends within 20 s of a 2 s timeout")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(2));
    let lines = watch_lines(&body);
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "BOOKMARK"], "{body}");
    assert_eq!(lines[0]["object"]["metadata"]["name"], "b");
    let bookmark = &lines[1]["object"];
    assert_eq!(bookmark["kind"], "ConfigMap");
    assert_eq!(bookmark["apiVersion"], "v1");
    assert!(rv_of(bookmark) >= rv_of(&b), "{bookmark}");
    // Without allowWatchBookmarks: no bookmark, and the watch still ends.
    let body = tokio::time::timeout(
        Duration::from_secs(20),
        s.http
            .get(format!(
                "{}{cms}?watch=1&resourceVersion={}&timeoutSeconds=1",
                s.url,
                rv_of(&b)
            ))
            .send()
            .await
            .unwrap()
            .text(),
    )
    .await
    .expect("the watch ends")
    .unwrap();
    assert_eq!(body, "", "nothing happened, nothing sent");

    // A resume from the bookmark misses nothing and repeats nothing.
    let (_, c) = s
        .call("POST", cms, Some(json!({"metadata": {"name": "c"}})))
        .await;
    let body = s
        .http
        .get(format!(
            "{}{cms}?watch=1&resourceVersion={}&timeoutSeconds=1",
            s.url,
            rv_of(bookmark)
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names: Vec<Value> = watch_lines(&body)
        .iter()
        .map(|l| l["object"]["metadata"]["name"].clone())
        .collect();
    assert_eq!(names, [json!("c")]);

    // A revision far ahead: refused after a bounded wait.
    let started = std::time::Instant::now();
    let (code, status) = s
        .call(
            "GET",
            &format!("{cms}?watch=1&resourceVersion={}", rv_of(&c) + 1_000_000),
            None,
        )
        .await;
    assert_eq!(code, 504, "{status}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(status["reason"], "Timeout");
    assert_eq!(
        status["details"]["causes"][0]["reason"], "ResourceVersionTooLarge",
        "{status}"
    );
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("Timeout: Too large resource version"),
        "{status}"
    );
    // A revision just ahead that the server reaches while waiting: served.
    let next = rv_of(&c) + 1;
    let ahead = tokio::spawn(
        s.http
            .get(format!(
                "{}{cms}?watch=1&resourceVersion={next}&timeoutSeconds=5",
                s.url
            ))
            .send(),
    );
    s.call("POST", cms, Some(json!({"metadata": {"name": "d"}})))
        .await;
    let ahead = ahead.await.unwrap().unwrap();
    assert_eq!(ahead.status(), 200, "a revision reached within the wait");

    // gRPC: the same timeout and bookmarks.
    let client = s.client().await;
    let mut stream = client
        .watch_with::<ConfigMap>(
            "default",
            &ListParams::default(),
            Some(&rv_of(&c).to_string()),
            skiff_client::WatchOptions {
                bookmarks: true,
                timeout_seconds: 1,
            },
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the gRPC watch ends within 20 s of a 1 s timeout")
    {
        got.push(ev.unwrap());
    }
    assert!(
        matches!(got.as_slice(), [WatchEvent::Added(d), WatchEvent::Bookmark(rv)]
            if d.name() == "d" && rv.parse::<i64>().unwrap() >= next),
        "{got:?}"
    );
    let err = match client
        .watch::<ConfigMap>("default", &ListParams::default(), Some("999999999"))
        .await
    {
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(err.code(), 504, "{err}");
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// `limit` and `continue`: every chunk of one list reads the first one's
/// snapshot, whatever is written between them; selectors fill chunks from
/// further on; a token whose history is gone is 410 Expired; bad values
/// are 400s. gRPC lists arrive in chunks the client follows.
async fn lists_in_chunks(mut s: TestServer) {
    let ns = "/api/v1/namespaces/chunks";
    s.call(
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "chunks"}})),
    )
    .await;
    let cms = format!("{ns}/configmaps");
    for i in 0..25 {
        let half = if i % 2 == 0 { "a" } else { "b" };
        let (code, body) = s
            .call(
                "POST",
                &cms,
                Some(json!({"metadata": {"name": format!("c{i:02}"), "labels": {"half": half}}, "data": {"v": "1"}})),
            )
            .await;
        assert_eq!(code, 201, "{body}");
    }
    let expected: Vec<String> = (0..25).map(|i| format!("c{i:02}")).collect();

    let (code, first) = s.call("GET", &format!("{cms}?limit=10"), None).await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(names(&first), expected[..10]);
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    if let Some(n) = first["metadata"].get("remainingItemCount") {
        assert_eq!(n, 15);
    }
    // Changes between chunks do not show in this list.
    s.call("DELETE", &format!("{cms}/c15"), None).await;
    s.call("POST", &cms, Some(json!({"metadata": {"name": "c99"}})))
        .await;
    s.call(
        "PATCH",
        &format!("{cms}/c12"),
        Some(json!({"data": {"v": "2"}})),
    )
    .await;
    let mut all = names(&first);
    let mut token = token;
    let mut chunks = 1;
    while !token.is_empty() {
        let (code, chunk) = s
            .call("GET", &format!("{cms}?limit=10&continue={token}"), None)
            .await;
        assert_eq!(code, 200, "{chunk}");
        assert_eq!(
            chunk["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"],
            "every chunk at one revision"
        );
        for o in chunk["items"].as_array().unwrap() {
            if o["metadata"]["name"] == "c12" {
                assert_eq!(o["data"]["v"], "1", "c12 as it was");
            }
        }
        all.extend(names(&chunk));
        token = chunk["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        chunks += 1;
    }
    assert_eq!(all, expected);
    assert_eq!(chunks, 3);

    // With a selector: chunks of matches.
    let mut matched = Vec::new();
    let mut token = String::new();
    loop {
        let (code, chunk) = s
            .call(
                "GET",
                &format!("{cms}?limit=4&labelSelector=half%3Da&continue={token}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{chunk}");
        let got = names(&chunk);
        assert!(got.len() <= 4);
        assert!(chunk["metadata"].get("remainingItemCount").is_none());
        matched.extend(got);
        match chunk["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    let evens: Vec<String> = (0..25).step_by(2).map(|i| format!("c{i:02}")).collect();
    assert_eq!(matched, evens);

    // Tables carry the token too (kubectl get pages its tables).
    let resp = s
        .http
        .get(format!("{}{cms}?limit=5", s.url))
        .header(
            "Accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .send()
        .await
        .unwrap();
    let table: Value = resp.json().await.unwrap();
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["rows"].as_array().unwrap().len(), 5);
    assert!(table["metadata"]["continue"].is_string(), "{table}");

    for (query, what) in [
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=5&continue=garbage", "continue"),
    ] {
        let (code, body) = s.call("GET", &format!("{cms}?{query}"), None).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(what),
            "{body}"
        );
    }

    // A token from before its history went away: 410 Expired.
    let (_, first) = s.call("GET", &format!("{cms}?limit=3"), None).await;
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    s.call("POST", &cms, Some(json!({"metadata": {"name": "c98"}})))
        .await;
    s.forget_history().await;
    let (code, body) = s
        .call("GET", &format!("{cms}?limit=3&continue={token}"), None)
        .await;
    assert_eq!(code, 410, "{body}");
    assert_eq!(body["reason"], "Expired");

    // gRPC: the client follows the chunks (more objects than one chunk).
    let client = s.client().await;
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..70 {
                    let cm = ConfigMap {
                        metadata: Some(skiff_api::ObjectMeta {
                            name: format!("g{w}-{i:02}"),
                            namespace: "chunks".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    };
                    client.create(&cm).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let listed = client
        .list::<ConfigMap>("chunks", &ListParams::default())
        .await
        .unwrap();
    // 25 - c15 + c99 + c98 + 560.
    assert_eq!(listed.items.len(), 25 - 1 + 2 + 560);
    let mut names: Vec<&str> = listed.items.iter().map(|c| c.name()).collect();
    names.dedup();
    assert_eq!(names.len(), listed.items.len(), "no repeats");
}

/// 100,000 objects in one namespace on etcd — about 10 MB, well over
/// etcd's 4 MiB default message size — list whole over REST, in chunks,
/// through the gRPC client, and as a watch's initial state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_objects_list_on_etcd() {
    use prost::Message as _;
    const N: usize = 100_000;
    let Some(etcd) = etcd().await else { return };
    let s = TestServer::on_etcd(etcd.clone()).await;
    s.call(
        "POST",
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "bulk"}})),
    )
    .await;
    // Written straight into etcd, 100 objects a transaction: the API's
    // own create path is not what this measures.
    let store = Arc::new(
        skiff_store::Etcd::connect(&[format!("http://{}", etcd.endpoint)], "/skiff/")
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for batch in (w * 100..N).step_by(800) {
                    let mut txn = skiff_store::Txn::default();
                    for i in batch..batch + 100 {
                        let cm = ConfigMap {
                            metadata: Some(skiff_api::ObjectMeta {
                                name: format!("cm-{i:06}"),
                                namespace: "bulk".into(),
                                uid: format!("uid-{i}"),
                                ..Default::default()
                            }),
                            data: [("k".to_string(), "v".repeat(64))].into(),
                            ..Default::default()
                        };
                        txn = txn.then(skiff_store::Op::Put {
                            key: Kind::ConfigMap.key("bulk", &cm.metadata.as_ref().unwrap().name),
                            value: cm.encode_to_vec(),
                            lease: 0,
                        });
                    }
                    let r = skiff_store::Store::txn(&*store, txn).await.unwrap();
                    assert!(r.succeeded);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let cms = "/api/v1/namespaces/bulk/configmaps";

    let resp = s.http.get(format!("{}{cms}", s.url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let whole: Value = resp.json().await.unwrap();
    assert_eq!(whole["items"].as_array().unwrap().len(), N);

    let mut token = String::new();
    let mut total = 0;
    loop {
        let (code, chunk) = s
            .call("GET", &format!("{cms}?limit=5000&continue={token}"), None)
            .await;
        assert_eq!(code, 200);
        total += chunk["items"].as_array().unwrap().len();
        match chunk["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    assert_eq!(total, N);

    let client = s.client().await;
    let listed = client
        .list::<ConfigMap>("bulk", &ListParams::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), N);
    assert_eq!(listed.items[N - 1].name(), format!("cm-{:06}", N - 1));

    let mut watch = client
        .watch::<ConfigMap>("bulk", &ListParams::default(), None)
        .await
        .unwrap();
    for _ in 0..N {
        let ev = tokio::time::timeout(Duration::from_secs(60), watch.next())
            .await
            .expect("the watch's initial state within 60 s")
            .unwrap()
            .unwrap();
        assert!(matches!(ev, WatchEvent::Added(_)));
    }
}

/// Request bodies share one budget: clients that announce large bodies and
/// send them slowly hold it, a further large request gets 429 with
/// Retry-After (while small requests still pass), and the budget comes
/// back when they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_share_a_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::embedded().await;
    let addr = s.running.as_ref().unwrap().addr;
    let path = "/api/v1/namespaces/default/configmaps";
    let big = 3 << 20;
    let post = |len: usize| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    let held = || async {
        let body = s
            .http
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .find_map(|l| l.strip_prefix("skiff_apiserver_request_body_bytes "))
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    // Ten slow uploads of 3 MiB: 30 of the 32 MiB.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut c = s.raw().await;
        c.write_all(post(big).as_bytes()).await.unwrap();
        c.write_all(b"{\"apiVersion\":").await.unwrap();
        slow.push(c);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while held().await < 10 * big {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow uploads hold the budget"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A small request passes.
    let (code, body) = s
        .call(
            "POST",
            path,
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "small"}})),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    // Another large one is refused after a short wait, saying why.
    let mut c = s.raw().await;
    c.write_all(post(big).as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let started = std::time::Instant::now();
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") || !answer.ends_with(b"}") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), c.read(&mut buf))
            .await
            .expect("an answer within 20 s")
            .unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 429"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.contains("\"reason\":\"toomanyrequests\""),
        "{answer}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // The slow clients go: the budget is free again.
    drop(slow);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while held().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the budget comes back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let big_cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "large"}, "data": {"blob": "x".repeat(1_000_000)}});
    let (code, body) = s.call("POST", path, Some(big_cm)).await;
    assert_eq!(code, 201, "{body}");
}

/// A watcher that stops reading while thousands of changes happen gets
/// every one of them afterwards, in order, none lost (the watch cache's
/// unit tests cover the live feed's lag and the catch-up from the window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_gets_every_event_later() {
    let s = TestServer::embedded().await;
    let client = s.client().await;
    let (_, list) = s
        .call("GET", "/api/v1/namespaces/default/configmaps", None)
        .await;
    let from = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut stream = client
        .watch_with::<ConfigMap>(
            "default",
            &ListParams::default(),
            Some(&from),
            skiff_client::WatchOptions::default(),
        )
        .await
        .unwrap();
    // 6,000 changes of 300 bytes while nobody reads: more than the live
    // feed keeps (1,024), less than the window.
    let n = 6000;
    let writer = s.client().await;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let writer = writer.clone();
        tasks.spawn(async move {
            for i in (w..n).step_by(4) {
                let cm = ConfigMap {
                    metadata: Some(skiff_api::ObjectMeta {
                        name: format!("c{i}"),
                        namespace: "default".into(),
                        ..Default::default()
                    }),
                    data: [("v".to_string(), "x".repeat(300))].into(),
                    ..Default::default()
                };
                writer.create(&cm).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut last = 0i64;
    for i in 0..n {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .unwrap_or_else(|_| panic!("event {i} within 20 s"))
            .expect("the watch goes on")
            .unwrap_or_else(|e| panic!("event {i}: {e}"));
        let WatchEvent::Added(cm) = ev else {
            panic!("event {i}: {ev:?}")
        };
        let rv: i64 = cm.meta().resource_version.parse().unwrap();
        assert!(rv > last, "in order, without repeats");
        last = rv;
    }
}

/// Events expire (kube-apiserver's --event-ttl): an Event is gone once its
/// TTL has passed since its last write, on both stores; other kinds stay.
async fn events_expire(etcd: Option<Arc<EtcdServer>>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        store: etcd.as_ref().map(|e| e.url()),
        event_ttl: Duration::from_secs(2),
        ..Config::default()
    };
    let s = TestServer::start(config, dir, etcd).await;
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "e1"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
        "reason": "Tested", "message": "m", "type": "Normal",
    });
    let (code, body) = s
        .call("POST", "/api/v1/namespaces/default/events", Some(event))
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = s
        .call(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"metadata": {"name": "stays"}})),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let created = std::time::Instant::now();
    let deadline = created + Duration::from_secs(30);
    loop {
        let (code, _) = s
            .call("GET", "/api/v1/namespaces/default/events/e1", None)
            .await;
        if code == 404 {
            break;
        }
        assert_eq!(code, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "the event outlived 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        created.elapsed() >= Duration::from_secs(2),
        "gone before its TTL: {:?}",
        created.elapsed()
    );
    let (code, _) = s
        .call("GET", "/api/v1/namespaces/default/configmaps/stays", None)
        .await;
    assert_eq!(code, 200, "a ConfigMap does not expire");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_embedded() {
    events_expire(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_etcd() {
    let Some(etcd) = etcd().await else { return };
    events_expire(Some(etcd)).await;
}
