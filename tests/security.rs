//! TLS and authentication on the API port, against a real `skiff server
//! --tls on`: curl checking the server's CA, kubectl (1.32 and Debian's
//! 1.20) and the skiff CLI (tonic over rustls) with the admin kubeconfig,
//! bearer tokens from a token file, anonymous callers, client
//! certificates of a CA the server does not trust or expired (401), plain
//! HTTP to the TLS port; nodes joining with join tokens, the audit log,
//! servers sharing their CAs through etcd.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use skiff_testkit::server::Server;
use skiff_testkit::{in_ci, require_tool};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const KUBECTL_1_20: &str = "/opt/kubernetes-client-1.20/usr/bin/kubectl";

/// curl's status code and body for `args`.
/// Two servers of one cluster on the etcd at `store`: the second is given
/// the first's token, so it joins that cluster (the temp dir holds the
/// copy of the token).
fn one_cluster_on(store: &str) -> (Server, Server, tempfile::TempDir) {
    let a = Server::start(
        Path::new(SKIFF),
        &["--store", store, "--no-controllers"],
        &[],
    );
    let joined = tempfile::tempdir().unwrap();
    let token_file = joined.path().join("token");
    std::fs::copy(a.data_dir().join("token"), &token_file).unwrap();
    let b = Server::start(
        Path::new(SKIFF),
        &[
            "--store",
            store,
            "--no-controllers",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    (a, b, joined)
}

/// Polls `f` until it answers (the policy follows the store's feed), for
/// at most 20 s.
fn until<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn ca(s: &Server) -> String {
    s.tls_file("server-ca.crt").display().to_string()
}

fn kubectl(bin: &Path, s: &Server, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args(args)
        .env("HOME", s.home.path())
        .env_remove("KUBECONFIG")
        .output()
        .expect("run kubectl")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectls() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = require_tool("kubectl").into_iter().collect();
    if Path::new(KUBECTL_1_20).is_file() {
        out.push(KUBECTL_1_20.into());
    } else {
        assert!(
            !in_ci(),
            "{KUBECTL_1_20} is required in CI: .ci/run unpacks it"
        );
    }
    out
}

#[test]
fn the_api_port_serves_tls_and_authenticates_every_request() {
    if require_tool("curl").is_none() {
        return;
    }
    let tokens = tempfile::tempdir().unwrap();
    let token_file = tokens.path().join("tokens.csv");
    std::fs::write(
        &token_file,
        "# test users\nalice-token,alice,1001,\"dev,ops\"\n",
    )
    .unwrap();
    let mut s = Server::start_secure(
        Path::new(SKIFF),
        &["--token-auth-file", token_file.to_str().unwrap()],
    );
    let base = s.url();
    assert!(base.starts_with("https://"), "{base}");

    // The admin kubeconfig and the keys are the owner's alone.
    let kubeconfig = s.kubeconfig();
    assert_eq!(kubeconfig, s.data_dir().join("admin.kubeconfig"));
    for f in [
        kubeconfig.clone(),
        s.tls_file("server-ca.key"),
        s.tls_file("client-ca.key"),
        s.tls_file("serving.key"),
    ] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }

    // Anonymous: health and version only; everything else 401 with a Status.
    for path in ["/readyz", "/healthz", "/livez", "/version"] {
        let (code, _) = curl(&["--cacert", &ca(&s), &format!("{base}{path}")]);
        assert_eq!(code, 200, "anonymous {path}");
    }
    for path in [
        "/api/v1/pods",
        "/api/v1/namespaces/default/configmaps",
        "/metrics",
        "/apis",
        "/openapi/v3",
    ] {
        let (code, body) = curl(&["--cacert", &ca(&s), &format!("{base}{path}")]);
        assert_eq!(code, 401, "anonymous {path}: {body}");
        let status: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Unauthorized");
        assert_eq!(status["code"], 401);
    }
    // `curl -k` too: skipping the server's check proves nothing about the caller.
    let (code, _) = curl(&["-k", &format!("{base}/api/v1/pods")]);
    assert_eq!(code, 401);
    // An anonymous write is refused and writes nothing.
    let cm =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"anon"},"data":{"a":"b"}}"#;
    let (code, body) = curl(&[
        "--cacert",
        &ca(&s),
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        cm,
        &format!("{base}/api/v1/namespaces/default/configmaps"),
    ]);
    assert_eq!(code, 401, "an anonymous write: {body}");

    // The admin's certificate (curl), then the skiff CLI over tonic and rustls.
    let mut admin = s.curl_admin();
    admin.push(format!("{base}/api/v1/namespaces/default/configmaps/anon"));
    let admin: Vec<&str> = admin.iter().map(String::as_str).collect();
    let (code, body) = curl(&admin);
    assert_eq!(code, 404, "the anonymous write stored nothing: {body}");
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app, namespace: default}\ndata: {k: v}\n");
    assert_eq!(s.get(&["configmap", "app"])["data"]["k"], "v");

    // Bearer tokens: a known one is its user, an unknown one is a 401
    // everywhere, health included.
    let bearer = |t: &str, path: &str| {
        curl(&[
            "--cacert",
            &ca(&s),
            "-H",
            &format!("Authorization: Bearer {t}"),
            &format!("{base}{path}"),
        ])
    };
    // Known, but granted nothing yet: 403, worded as Kubernetes words it.
    let (code, body) = bearer("alice-token", "/api/v1/namespaces/default/configmaps/app");
    assert_eq!(code, 403, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["message"],
        "configmaps \"app\" is forbidden: User \"alice\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(status["reason"], "Forbidden");
    // `view` in default for her group, then she reads.
    s.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: dev-view, namespace: default}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: dev}]\n",
    );
    let (code, body) = until(|| {
        let r = bearer("alice-token", "/api/v1/namespaces/default/configmaps/app");
        (r.0 != 403).then_some(r)
    });
    assert_eq!(code, 200, "{body}");
    assert_eq!(bearer("wrong", "/api/v1/namespaces").0, 401);
    assert_eq!(bearer("wrong", "/readyz").0, 401);

    // Who the server takes each caller for (`kubectl auth whoami`).
    let review = |extra: &[&str]| -> Value {
        let mut args = vec![
            "--cacert".to_string(),
            ca(&s),
            "-X".into(),
            "POST".into(),
            "-H".into(),
            "Content-Type: application/json".into(),
            "-d".into(),
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#.into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args.push(format!(
            "{base}/apis/authentication.k8s.io/v1/selfsubjectreviews"
        ));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(&args);
        assert_eq!(code, 201, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["status"]["userInfo"].clone()
    };
    let alice = review(&["-H", "Authorization: Bearer alice-token"]);
    assert_eq!(alice["username"], "alice");
    assert_eq!(
        alice["groups"],
        serde_json::json!(["dev", "ops", "system:authenticated"])
    );
    let cert = s.tls_file("admin.crt").display().to_string();
    let key = s.tls_file("admin.key").display().to_string();
    let admin_user = review(&["--cert", &cert, "--key", &key]);
    assert_eq!(admin_user["username"], "system:admin");
    assert_eq!(
        admin_user["groups"],
        serde_json::json!(["system:masters", "system:authenticated"])
    );

    // kubectl with the admin kubeconfig.
    for bin in kubectls() {
        let out = ok(
            kubectl(
                &bin,
                &s,
                &["get", "configmap", "app", "-o", "jsonpath={.data.k}"],
            ),
            "kubectl get",
        );
        assert_eq!(out, "v", "{}", bin.display());
        ok(
            kubectl(&bin, &s, &["get", "pods", "-A"]),
            "kubectl get pods",
        );
    }
    if let Some(bin) = require_tool("kubectl") {
        let who = ok(
            kubectl(&bin, &s, &["auth", "whoami", "-o", "json"]),
            "kubectl auth whoami",
        );
        let who: Value = serde_json::from_str(&who).unwrap();
        assert_eq!(who["status"]["userInfo"]["username"], "system:admin");
    }

    // The CLI with a kubeconfig whose token proves nothing hears 401 (gRPC).
    let bad = s.home.path().join("bad.kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut doc = doc;
    doc["users"][0]["user"] = serde_json::json!({"token": "wrong"});
    std::fs::write(&bad, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let out = Command::new(SKIFF)
        .args(["--kubeconfig", bad.to_str().unwrap(), "get", "configmaps"])
        .env("HOME", s.home.path())
        .env_remove("SKIFF_SERVER")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Unauthorized"), "{err}");
    // The token of a known user works through the CLI too.
    doc["users"][0]["user"] = serde_json::json!({"token": "alice-token"});
    std::fs::write(&bad, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let out = Command::new(SKIFF)
        .args([
            "--kubeconfig",
            bad.to_str().unwrap(),
            "get",
            "configmap",
            "app",
            "-o",
            "json",
        ])
        .env("HOME", s.home.path())
        .env_remove("SKIFF_SERVER")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    ok(out, "skiff get with alice's token");

    // A client certificate from a CA the server does not trust: 401 with
    // a Status, as kube-apiserver answers.
    let foreign = tempfile::tempdir().unwrap();
    let (fc, fk) = (foreign.path().join("c.crt"), foreign.path().join("c.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=mallory/O=system:masters",
            "-keyout",
        ])
        .arg(&fk)
        .arg("-out")
        .arg(&fc)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let (code, body) = curl(&[
        "--cacert",
        &ca(&s),
        "--cert",
        fc.to_str().unwrap(),
        "--key",
        fk.to_str().unwrap(),
        &format!("{base}/api/v1/pods"),
    ]);
    assert_eq!(code, 401, "a foreign certificate: {body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["reason"], "Unauthorized");
    // An expired certificate of the server's own client CA: 401 too.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(s.tls_file("client-ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::CertificateParams::from_ca_cert_pem(
        &std::fs::read_to_string(s.tls_file("client-ca.crt")).unwrap(),
    )
    .unwrap()
    .self_signed(&ca_key)
    .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let expired = params.signed_by(&key, &issuer, &ca_key).unwrap().pem();
    let (ec, ek) = (foreign.path().join("e.crt"), foreign.path().join("e.key"));
    std::fs::write(&ec, expired).unwrap();
    std::fs::write(&ek, key.serialize_pem()).unwrap();
    let (code, body) = curl(&[
        "--cacert",
        &ca(&s),
        "--cert",
        ec.to_str().unwrap(),
        "--key",
        ek.to_str().unwrap(),
        &format!("{base}/api/v1/pods"),
    ]);
    assert_eq!(code, 401, "an expired certificate: {body}");

    // Plain HTTP to the TLS port gets no API answer.
    let (code, _) = curl(&[&format!("http://{}/api/v1/pods", s.addr)]);
    assert_ne!(code, 200);

    // A restart keeps the CA and the admin's credentials.
    let before = std::fs::read_to_string(s.tls_file("server-ca.crt")).unwrap();
    s.kill();
    s.boot();
    assert_eq!(
        std::fs::read_to_string(s.tls_file("server-ca.crt")).unwrap(),
        before
    );
    assert_eq!(s.get(&["configmap", "app"])["data"]["k"], "v");
}

/// `skiff node` against `s` with `token`, its state under `dir`; stderr
/// goes to `<dir>/node.log`. No containerd: a node that joined waits for
/// it, which is where these tests stop it.
fn node(s: &Server, name: &str, token: &str, dir: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .unwrap();
    let mut c = Command::new(SKIFF);
    c.args(["--server", &s.url(), "node", "--name", name])
        .args(["--node-ip", "127.0.0.1", "--no-datapath", "--token", token])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .arg("--containerd")
        .arg(dir.join("no-containerd.sock"))
        .env("HOME", dir)
        .env_remove("SKIFF_SERVER")
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    c
}

/// Starts a node and waits until it says it stored new certificates;
/// stopped after.
fn join(s: &Server, name: &str, token: &str, dir: &Path) {
    let log = || std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    let stored = |text: &str| text.matches("node certificates stored").count();
    let before = stored(&log());
    let mut child = skiff_testkit::KillOnDrop(node(s, name, token, dir).spawn().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if stored(&log()) > before {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "skiff node exited with {status}: {}",
                std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificates: {}",
            std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill();
}

/// Who the server takes a client certificate for.
fn whoami(s: &Server, cert: &Path, key: &Path) -> Value {
    let (code, body) = curl(&[
        "--cacert",
        &ca(s),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
        &format!(
            "{}/apis/authentication.k8s.io/v1/selfsubjectreviews",
            s.url()
        ),
    ]);
    assert_eq!(code, 201, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["status"]["userInfo"].clone()
}

fn not_after(cert_pem: &str) -> time::OffsetDateTime {
    rcgen::CertificateParams::from_ca_cert_pem(cert_pem)
        .unwrap()
        .not_after
}

#[test]
fn nodes_join_with_a_k10_token_and_renew_their_certificates() {
    if require_tool("curl").is_none() {
        return;
    }
    let s = Server::start_secure(Path::new(SKIFF), &[]);
    let server_token = std::fs::read_to_string(s.data_dir().join("token")).unwrap();
    let bundle = std::fs::read_to_string(s.tls_file("server-ca.crt")).unwrap();
    // The token carries the hash of what /cacerts serves (anonymously).
    let (code, served) = curl(&["-k", &format!("{}/cacerts", s.url())]);
    assert_eq!((code, served.as_str()), (200, bundle.as_str()));
    let (hash, rest) = server_token
        .strip_prefix("K10")
        .and_then(|t| t.split_once("::"))
        .expect("K10<hash>::<id>:<secret>");
    assert_eq!(hash, skiff_api::join::ca_hash(&bundle));
    assert!(rest.starts_with("server:"), "{rest}");

    // A token of another CA: the node refuses, before sending its secret.
    let dir = tempfile::tempdir().unwrap();
    let wrong = format!("K10{}::{rest}", "0".repeat(64));
    let out = node(&s, "n1", &wrong, dir.path()).output().unwrap();
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(
        !out.status.success() && log.contains("refusing to join"),
        "{log}"
    );
    // A bad secret: the server refuses.
    let bad = format!("K10{hash}::server:{}", "x".repeat(32));
    let out = node(&s, "n1", &bad, dir.path()).output().unwrap();
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap();
    assert!(
        !out.status.success() && log.contains("refused to join"),
        "{log}"
    );
    assert!(!dir.path().join("data/pki/client.crt").exists());

    // Tokens made with `skiff token`: shown once, listed without secrets.
    let made = s.ok(&["token", "create", "--ttl", "1h", "--description", "ci join"]);
    let made = made.trim();
    let joined = skiff_api::join::JoinToken::parse(made).unwrap();
    assert_eq!(joined.ca_hash.as_deref(), Some(hash));
    let list = s.ok(&["token", "list"]);
    assert!(
        list.contains(&joined.id) && list.contains("ci join"),
        "{list}"
    );
    assert!(
        list.contains("server") && !list.contains(&joined.secret),
        "{list}"
    );

    // The node joins: its own key, a certificate as system:node:n1.
    join(&s, "n1", made, dir.path());
    let pki = dir.path().join("data/pki");
    let mode = std::fs::metadata(pki.join("client.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let user = whoami(&s, &pki.join("client.crt"), &pki.join("client.key"));
    assert_eq!(user["username"], "system:node:n1", "{user}");
    assert!(
        user["groups"]
            .as_array()
            .unwrap()
            .contains(&"system:nodes".into()),
        "{user}"
    );
    // The server keeps only a hash of the secret.
    let store = std::fs::read(s.data_dir().join("skiff.redb")).unwrap();
    let needle = joined.secret.as_bytes();
    assert!(
        !store.windows(needle.len()).any(|w| w == needle),
        "a join token's secret in the store file"
    );

    // A join token is good for joining only.
    let (code, body) = curl(&[
        "--cacert",
        &ca(&s),
        "-H",
        &format!("Authorization: Bearer {}", joined.bearer()),
        &format!("{}/api/v1/namespaces/default/configmaps", s.url()),
    ]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("may only join nodes"), "{body}");

    // A deleted token joins nothing more.
    s.ok(&["token", "delete", &joined.id]);
    assert!(!s.ok(&["token", "list"]).contains(&joined.id));
    let other = tempfile::tempdir().unwrap();
    let out = node(&s, "n2", made, other.path()).output().unwrap();
    let log = std::fs::read_to_string(other.path().join("node.log")).unwrap();
    assert!(
        !out.status.success() && log.contains("refused to join"),
        "{log}"
    );

    // Renewal: a client certificate 10 days from expiry (same key, signed
    // by the client CA) is renewed at start with itself as the proof, no
    // token needed.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(s.tls_file("client-ca.key")).unwrap())
            .unwrap();
    let ca_pem = std::fs::read_to_string(s.tls_file("client-ca.crt")).unwrap();
    let issuer = rcgen::CertificateParams::from_ca_cert_pem(&ca_pem)
        .unwrap()
        .self_signed(&ca_key)
        .unwrap();
    let node_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("client.key")).unwrap())
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:n1");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let short = params.signed_by(&node_key, &issuer, &ca_key).unwrap().pem();
    std::fs::write(pki.join("client.crt"), &short).unwrap();
    // The server takes it as the node's (so it can prove who renews).
    let user = whoami(&s, &pki.join("client.crt"), &pki.join("client.key"));
    assert_eq!(user["username"], "system:node:n1", "{user}");
    // (A token it cannot parse: joining with it would fail.)
    join(&s, "n1", "not-a-token", dir.path());
    let renewed = std::fs::read_to_string(pki.join("client.crt")).unwrap();
    assert!(
        not_after(&renewed) > time::OffsetDateTime::now_utc() + time::Duration::days(300),
        "not renewed for a year"
    );
    let user = whoami(&s, &pki.join("client.crt"), &pki.join("client.key"));
    assert_eq!(user["username"], "system:node:n1", "{user}");

    // The node moves to another cluster: its token names another CA, so
    // it joins afresh instead of showing certificates nobody there knows.
    let other = Server::start_secure(Path::new(SKIFF), &[]);
    let other_token = std::fs::read_to_string(other.data_dir().join("token")).unwrap();
    join(&other, "n1", other_token.trim(), dir.path());
    let user = whoami(&other, &pki.join("client.crt"), &pki.join("client.key"));
    assert_eq!(user["username"], "system:node:n1", "{user}");
}

/// The audit lines written so far, once `want` of them are there (the
/// writer runs behind the requests).
fn audit_lines(s: &Server, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(s.data_dir().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if want(&lines) {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit log: {lines:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn every_change_is_in_the_audit_log_with_its_user() {
    if require_tool("curl").is_none() {
        return;
    }
    let s = Server::start_secure(Path::new(SKIFF), &[]);
    // gRPC (the CLI), REST (curl), and kubectl; a read and a refused
    // anonymous write besides.
    s.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: audited}\ndata: {a: b}\n");
    let cm = format!("{}/api/v1/namespaces/default/configmaps/audited", s.url());
    let out = s
        .curl()
        .args([
            "-sf",
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/merge-patch+json",
        ])
        .args(["-d", r#"{"data":{"a":"c"}}"#, &cm])
        .output()
        .unwrap();
    assert!(out.status.success());
    s.ok(&["get", "cm", "audited"]);
    let (code, _) = curl(&["--cacert", &ca(&s), "-X", "DELETE", &cm]);
    assert_eq!(code, 401);
    for kubectl_bin in kubectls().into_iter().take(1) {
        ok(
            kubectl(&kubectl_bin, &s, &["delete", "configmap", "audited"]),
            "kubectl delete",
        );
    }
    let named = |l: &Value| l["objectRef"]["name"] == "audited";
    let lines = audit_lines(&s, |ls| ls.iter().filter(|l| named(l)).count() >= 3);
    let ours: Vec<&Value> = lines.iter().filter(|l| named(l)).collect();
    let verbs: Vec<&str> = ours.iter().map(|l| l["verb"].as_str().unwrap()).collect();
    // skiff apply (gRPC create), curl (REST patch), kubectl (delete); the
    // read and the refused anonymous delete are not there.
    assert_eq!(verbs, ["create", "patch", "delete"]);
    for l in &ours {
        assert_eq!(l["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(l["user"]["username"], "system:admin", "{l}");
        assert_eq!(l["objectRef"]["resource"], "configmaps");
        assert_eq!(l["objectRef"]["namespace"], "default");
        assert_eq!(l["sourceIPs"][0], "127.0.0.1");
        assert!(l["responseStatus"]["code"].as_u64().unwrap() < 300, "{l}");
    }
    let mode = std::fs::metadata(s.data_dir().join("audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn servers_on_one_etcd_share_the_ca_and_each_others_tokens() {
    if require_tool("curl").is_none() || require_tool("etcdctl").is_none() {
        return;
    }
    let Some(etcd) = skiff_testkit::EtcdServer::start() else {
        return;
    };
    let store = etcd.url();
    let (a, b, _joined) = one_cluster_on(&store);
    let ca_of = |s: &Server| std::fs::read_to_string(s.tls_file("server-ca.crt")).unwrap();
    assert_eq!(ca_of(&a), ca_of(&b), "one cluster CA");
    assert_eq!(
        std::fs::read_to_string(s_client_ca(&a)).unwrap(),
        std::fs::read_to_string(s_client_ca(&b)).unwrap()
    );
    // A's admin is B's admin: the same client CA, and B's serving
    // certificate checks against the one CA.
    let out = Command::new(SKIFF)
        .arg("--kubeconfig")
        .arg(a.kubeconfig())
        .args(["--server", &b.url(), "get", "ns", "default"])
        .env("HOME", a.home.path())
        .output()
        .unwrap();
    ok(out, "A's admin against B");
    // A token made on A joins a node through B.
    let made = a.ok(&["token", "create", "--ttl", "10m"]);
    let dir = tempfile::tempdir().unwrap();
    join(&b, "n9", made.trim(), dir.path());
    let pki = dir.path().join("data/pki");
    let user = whoami(&a, &pki.join("client.crt"), &pki.join("client.key"));
    assert_eq!(user["username"], "system:node:n9", "{user}");
    // etcd holds the CAs encrypted: no key in plain text.
    let dump = Command::new("etcdctl")
        .args(["--endpoints", &etcd.endpoint, "get", "--prefix", "/skiff/"])
        .output()
        .unwrap();
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("registry/skiff/bootstrap/ca"),
        "the CAs are stored"
    );
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a private key in etcd in plain text"
    );
    assert!(!dump.contains(&made.trim().rsplit(':').next().unwrap().to_string()));
    // A server with another token cannot read them and refuses to start.
    let other = tempfile::tempdir().unwrap();
    let mut child = Command::new(SKIFF)
        .args([
            "server",
            "--store",
            &store,
            "--no-controllers",
            "--no-client-config",
        ])
        .args([
            "--listen",
            &format!("127.0.0.1:{}", skiff_testkit::free_port()),
        ])
        .arg("--data-dir")
        .arg(other.path())
        .env("HOME", other.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a server with another token started on the cluster's store");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("do not decrypt with this server's token"),
        "{err}"
    );
}

fn s_client_ca(s: &Server) -> PathBuf {
    s.tls_file("client-ca.crt")
}

#[test]
fn the_kubeconfig_context_namespace_is_the_default_namespace() {
    let s = Server::start_secure(Path::new(SKIFF), &[]);
    s.ok(&["create", "namespace", "team-ctx"]);
    let mut doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(s.kubeconfig()).unwrap()).unwrap();
    doc["contexts"][0]["context"]["namespace"] = "team-ctx".into();
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("config");
    std::fs::write(&k, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    let skiff = |args: &[&str]| {
        Command::new(SKIFF)
            .arg("--kubeconfig")
            .arg(&k)
            .args(args)
            .env("HOME", dir.path())
            .env_remove("KUBECONFIG")
            .env_remove("SKIFF_SERVER")
            .output()
            .unwrap()
    };
    let mut apply = Command::new(SKIFF)
        .arg("--kubeconfig")
        .arg(&k)
        .args(["apply", "-f", "-"])
        .env("HOME", dir.path())
        .env_remove("KUBECONFIG")
        .env_remove("SKIFF_SERVER")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut apply.stdin.take().unwrap(),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: here}\n",
    )
    .unwrap();
    ok(
        apply.wait_with_output().unwrap(),
        "apply in the context's namespace",
    );
    let got = ok(skiff(&["get", "cm", "here", "-o", "json"]), "get");
    let cm: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(cm["metadata"]["namespace"], "team-ctx");
    // -n wins over the context.
    let out = skiff(&["get", "cm", "here", "-n", "default"]);
    assert!(!out.status.success());
}

/// One request with curl as `who` (curl flags naming a token or a
/// certificate): its status code and body.
fn call(s: &Server, who: &[String], method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut args: Vec<String> = vec!["--cacert".into(), ca(s), "-X".into(), method.into()];
    args.extend(who.iter().cloned());
    if let Some(b) = body {
        let ct = if method == "PATCH" {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        args.extend([
            "-H".into(),
            format!("Content-Type: {ct}"),
            "-d".into(),
            b.into(),
        ]);
    }
    args.push(format!("{}{path}", s.url()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args)
}

fn bearer_flags(token: &str) -> Vec<String> {
    vec!["-H".into(), format!("Authorization: Bearer {token}")]
}

fn message(body: &str) -> String {
    serde_json::from_str::<Value>(body).map_or_else(
        |_| body.to_string(),
        |v| v["message"].as_str().unwrap_or("").to_string(),
    )
}

/// A kubeconfig for the admin's cluster with a token user instead.
fn token_kubeconfig(s: &Server, token: &str, at: &Path) -> PathBuf {
    let text = std::fs::read_to_string(s.kubeconfig()).unwrap();
    let mut doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    doc["users"][0]["user"] = serde_json::json!({ "token": token });
    std::fs::write(at, serde_yaml_ng::to_string(&doc).unwrap()).unwrap();
    at.to_path_buf()
}

#[test]
fn rbac_grants_what_bindings_say_and_nothing_more() {
    if require_tool("curl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "viewer-token,viewer,1\neditor-token,editor,2\nnsadmin-token,nsadmin,3\n",
    )
    .unwrap();
    let s = Server::start_secure(
        Path::new(SKIFF),
        &["--token-auth-file", tokens.to_str().unwrap()],
    );
    let binding = |name: &str, role: &str, user: &str| {
        format!(
            "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}, namespace: team}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {role}}}\n\
             subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n"
        )
    };
    s.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: team}}\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c, namespace: team}}\ndata: {{k: v}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: team}}\nspec: {{containers: [{{name: c, image: demo}}]}}\n\
         {}{}{}",
        binding("viewers", "view", "viewer"),
        binding("editors", "edit", "editor"),
        binding("admins", "admin", "nsadmin"),
    ));
    let (viewer, editor, nsadmin) = (
        bearer_flags("viewer-token"),
        bearer_flags("editor-token"),
        bearer_flags("nsadmin-token"),
    );
    let admin = s.curl_admin()[2..].to_vec();
    // The bindings reach the policy through the store's feed.
    for who in [&viewer, &editor, &nsadmin] {
        until(|| {
            (call(&s, who, "GET", "/api/v1/namespaces/team/pods", None).0 == 200).then_some(())
        });
    }

    // view: reads, and nothing else.
    let (code, body) = call(
        &s,
        &viewer,
        "DELETE",
        "/api/v1/namespaces/team/configmaps/c",
        None,
    );
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        message(&body),
        "configmaps \"c\" is forbidden: User \"viewer\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"team\""
    );
    assert_eq!(
        call(
            &s,
            &admin,
            "GET",
            "/api/v1/namespaces/team/configmaps/c",
            None
        )
        .0,
        200
    );
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"by-viewer"}}"#;
    assert_eq!(
        call(
            &s,
            &viewer,
            "POST",
            "/api/v1/namespaces/team/configmaps",
            Some(cm)
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &s,
            &admin,
            "GET",
            "/api/v1/namespaces/team/configmaps/by-viewer",
            None
        )
        .0,
        404,
        "a refused write stores nothing"
    );
    let (code, body) = call(
        &s,
        &viewer,
        "GET",
        "/api/v1/namespaces/team/pods/web/exec?command=ls&stdout=true",
        None,
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        message(&body).contains("cannot create resource \"pods/exec\""),
        "{body}"
    );
    let (code, body) = call(
        &s,
        &viewer,
        "GET",
        "/api/v1/namespaces/team/pods/web/log",
        None,
    );
    assert_ne!(code, 403, "view reads logs: {body}");
    let (code, body) = call(&s, &viewer, "GET", "/api/v1/namespaces/default/pods", None);
    assert_eq!(
        code, 403,
        "a RoleBinding grants in its namespace only: {body}"
    );
    let (code, body) = call(&s, &viewer, "GET", "/api/v1/pods", None);
    assert_eq!(code, 403);
    assert!(message(&body).ends_with("at the cluster scope"), "{body}");
    // gRPC says the same (the CLI with the viewer's token).
    let kc = token_kubeconfig(&s, "viewer-token", &dir.path().join("viewer.kubeconfig"));
    let cli = |args: &[&str]| {
        Command::new(SKIFF)
            .arg("--kubeconfig")
            .arg(&kc)
            .args(args)
            .env("HOME", s.home.path())
            .env_remove("SKIFF_SERVER")
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    };
    let out = cli(&["delete", "configmap", "c", "-n", "team"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("User \"viewer\" cannot delete resource \"configmaps\""),
        "{err}"
    );
    // Refusals are audited, over gRPC as over REST.
    let refused = |l: &Value, uri_start: &str| {
        l["user"]["username"] == "viewer"
            && l["verb"] == "delete"
            && l["responseStatus"]["code"] == 403
            && l["requestURI"]
                .as_str()
                .is_some_and(|u| u.starts_with(uri_start))
    };
    audit_lines(&s, |ls| {
        ls.iter().any(|l| refused(l, "/skiff.v1.Resources/"))
            && ls.iter().any(|l| refused(l, "/api/v1/"))
    });
    ok(cli(&["get", "pods", "-n", "team"]), "skiff get as viewer");
    // can-i, both CLIs.
    let out = cli(&["auth", "can-i", "delete", "configmaps", "-n", "team"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        (Some(1), "no")
    );
    let out = cli(&["auth", "can-i", "list", "pods", "-n", "team"]);
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        (Some(0), "yes")
    );
    let out = cli(&[
        "auth",
        "can-i",
        "create",
        "pods",
        "--subresource",
        "exec",
        "-n",
        "team",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    let out = cli(&["auth", "can-i", "--list", "-n", "team"]);
    let listed = ok(out, "can-i --list");
    assert!(
        listed.contains("deployments.apps") && listed.contains("/api/*"),
        "{listed}"
    );
    if let Some(bin) = require_tool("kubectl") {
        let kubectl_as = |args: &[&str]| {
            Command::new(&bin)
                .arg("--kubeconfig")
                .arg(&kc)
                .args(args)
                .output()
                .unwrap()
        };
        let out = kubectl_as(&["auth", "can-i", "delete", "pods", "-n", "team"]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{out:?}");
        assert_eq!(out.status.code(), Some(1));
        let out = kubectl_as(&["auth", "can-i", "get", "pods", "-n", "team"]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "yes",
            "{out:?}"
        );
        let out = kubectl_as(&["auth", "can-i", "--list", "-n", "team"]);
        let listed = String::from_utf8_lossy(&out.stdout);
        assert!(listed.contains("pods/log"), "{listed}");
        // The viewer may not act as anyone else.
        let out = kubectl_as(&["get", "pods", "-n", "team", "--as", "system:admin"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("User \"viewer\" cannot impersonate resource \"users\""),
            "{err}"
        );
        // The admin may (`--as`), and kubectl's protobuf RBAC bodies are read.
        let admin_kubectl = |args: &[&str]| kubectl(&bin, &s, args);
        let out = admin_kubectl(&[
            "auth",
            "can-i",
            "delete",
            "configmaps",
            "-n",
            "team",
            "--as",
            "viewer",
        ]);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no", "{out:?}");
        let out = admin_kubectl(&[
            "auth", "can-i", "list", "pods", "-n", "team", "--as", "viewer",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "yes",
            "{out:?}"
        );
        ok(
            admin_kubectl(&[
                "create",
                "role",
                "cm-deleter",
                "--verb=delete",
                "--resource=configmaps",
                "-n",
                "team",
            ]),
            "kubectl create role",
        );
        ok(
            admin_kubectl(&[
                "create",
                "rolebinding",
                "viewer-deletes",
                "--role=cm-deleter",
                "--user=viewer",
                "-n",
                "team",
            ]),
            "kubectl create rolebinding",
        );
        until(|| {
            let out = kubectl_as(&["auth", "can-i", "delete", "configmaps", "-n", "team"]);
            (String::from_utf8_lossy(&out.stdout).trim() == "yes").then_some(())
        });
        ok(
            admin_kubectl(&["delete", "rolebinding", "viewer-deletes", "-n", "team"]),
            "kubectl delete rolebinding",
        );
        until(|| {
            let out = kubectl_as(&["auth", "can-i", "delete", "configmaps", "-n", "team"]);
            (String::from_utf8_lossy(&out.stdout).trim() == "no").then_some(())
        });
    }

    // edit: changes workloads, not who may.
    let cm = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"by-editor"}}"#;
    assert_eq!(
        call(
            &s,
            &editor,
            "POST",
            "/api/v1/namespaces/team/configmaps",
            Some(cm)
        )
        .0,
        201
    );
    let rb = |name: &str, role: &str| {
        format!(
            r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"RoleBinding","metadata":{{"name":"{name}"}},"roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"{role}"}},"subjects":[{{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"someone"}}]}}"#
        )
    };
    let rbs = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings";
    let (code, body) = call(&s, &editor, "POST", rbs, Some(&rb("e", "edit")));
    assert_eq!(code, 403, "{body}");

    // admin: roles and bindings in the namespace, but no more than it holds.
    let role = |name: &str, resource: &str, verb: &str| {
        format!(
            r#"{{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"Role","metadata":{{"name":"{name}"}},"rules":[{{"apiGroups":[""],"resources":["{resource}"],"verbs":["{verb}"]}}]}}"#
        )
    };
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles";
    let (code, body) = call(
        &s,
        &nsadmin,
        "POST",
        roles,
        Some(&role("pod-reader", "pods", "get")),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = call(
        &s,
        &nsadmin,
        "POST",
        roles,
        Some(&role("node-lister", "nodes", "list")),
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        message(&body).contains("is attempting to grant RBAC permissions not currently held")
            && message(&body).contains("Resources:[\"nodes\"]"),
        "{body}"
    );
    let (code, body) = call(
        &s,
        &nsadmin,
        "POST",
        rbs,
        Some(&rb("too-much", "cluster-admin")),
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = call(
        &s,
        &nsadmin,
        "POST",
        rbs,
        Some(&rb("someone-edits", "edit")),
    );
    assert_eq!(code, 201, "admin holds all of edit: {body}");
    assert_eq!(
        call(&s, &admin, "GET", &format!("{rbs}/too-much"), None).0,
        404,
        "the refused binding is not stored"
    );
    // A binding's role cannot change.
    let (code, body) = call(
        &s,
        &admin,
        "PATCH",
        &format!("{rbs}/someone-edits"),
        Some(
            r#"{"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"view"}}"#,
        ),
    );
    assert_eq!(code, 422, "{body}");
    assert!(message(&body).contains("cannot change roleRef"), "{body}");
    // Cluster-wide, the namespace admin is nobody.
    assert_eq!(
        call(
            &s,
            &nsadmin,
            "GET",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            None
        )
        .0,
        403
    );
    // The defaults are there, and the admin sees them.
    let (code, body) = call(
        &s,
        &admin,
        "GET",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/system:node",
        None,
    );
    assert_eq!(code, 200, "{body}");
}

/// A client certificate for `cn`/`o`, signed by the server's client CA.
fn client_cert(s: &Server, dir: &Path, cn: &str, o: &str) -> Vec<String> {
    // No colons in the file names: curl reads `--cert FILE:PASSWORD`.
    let stem = cn.replace(':', "-");
    let (key, csr, crt) = (
        dir.join(format!("{stem}.key")),
        dir.join(format!("{stem}.csr")),
        dir.join(format!("{stem}.crt")),
    );
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let subj = format!("/CN={cn}/O={o}");
    run(&[
        "req".as_ref(),
        "-newkey".as_ref(),
        "ec".as_ref(),
        "-pkeyopt".as_ref(),
        "ec_paramgen_curve:P-256".as_ref(),
        "-nodes".as_ref(),
        "-subj".as_ref(),
        subj.as_ref(),
        "-keyout".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        csr.as_os_str(),
    ]);
    let (ca_crt, ca_key) = (s.tls_file("client-ca.crt"), s.tls_file("client-ca.key"));
    // An X.509 v3 client certificate (webpki takes no v1).
    let ext = dir.join("client.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(&[
        "x509".as_ref(),
        "-req".as_ref(),
        "-in".as_ref(),
        csr.as_os_str(),
        "-CA".as_ref(),
        ca_crt.as_os_str(),
        "-CAkey".as_ref(),
        ca_key.as_os_str(),
        "-CAcreateserial".as_ref(),
        "-days".as_ref(),
        "1".as_ref(),
        "-extfile".as_ref(),
        ext.as_os_str(),
        "-out".as_ref(),
        crt.as_os_str(),
    ]);
    vec![
        "--cert".into(),
        crt.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]
}

#[test]
fn node_restriction_confines_a_node_to_its_own_objects() {
    if require_tool("curl").is_none() || require_tool("openssl").is_none() {
        return;
    }
    let s = Server::start_secure(Path::new(SKIFF), &[]);
    let dir = tempfile::tempdir().unwrap();
    let n1 = client_cert(&s, dir.path(), "system:node:n1", "system:nodes");
    let pod = |name: &str, node: &str, cm: &str| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: demo}}], volumes: [{{name: v, configMap: {{name: {cm}}}}}]}}\n"
        )
    };
    // Both nodes exist (a pod bound to a missing node is collected).
    s.apply(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: n1}}\n\
         ---\napiVersion: v1\nkind: Node\nmetadata: {{name: n2}}\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c1, namespace: default}}\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c2, namespace: default}}\n\
         ---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c3, namespace: default}}\n{}{}",
        pod("p1", "n1", "c1"),
        pod("p2", "n2", "c2"),
    ));
    // The graph of pods by node follows the feed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, body) = call(
            &s,
            &n1,
            "GET",
            "/api/v1/namespaces/default/configmaps/c1",
            None,
        );
        if code == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node never read c1: {code} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The ServiceAccount controller makes `default` in every namespace.
    let admin = s.curl_admin()[2..].to_vec();
    until(|| {
        (call(
            &s,
            &admin,
            "GET",
            "/api/v1/namespaces/default/serviceaccounts/default",
            None,
        )
        .0 == 200)
            .then_some(())
    });
    let node = |name: &str, labels: &str| {
        format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}","labels":{{{labels}}}}}}}"#
        )
    };
    let lease = |name: &str| {
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"{name}"}},"spec":{{"holderIdentity":"{name}"}}}}"#
        )
    };
    let cm = "/api/v1/namespaces/default/configmaps";
    let pods = "/api/v1/namespaces/default/pods";
    let leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let running = r#"{"status":{"phase":"Running"}}"#;
    let token_for = |pod: &str| {
        format!(
            r#"{{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{{"boundObjectRef":{{"kind":"Pod","apiVersion":"v1","name":"{pod}"}}}}}}"#
        )
    };
    let taint = r#"{"spec":{"taints":[{"key":"k","effect":"NoSchedule"}]}}"#;
    // (what, method, path, body, the codes it may get, what the refusal says)
    type Case<'a> = (&'a str, &'a str, String, Option<String>, &'a [u16], &'a str);
    let cases: Vec<Case> = vec![
        ("a ConfigMap its pod uses", "GET", format!("{cm}/c1"), None, &[200], ""),
        ("a ConfigMap of another node's pod", "GET", format!("{cm}/c2"), None, &[403], "no relationship found between node 'n1' and this object"),
        ("a ConfigMap no pod uses", "GET", format!("{cm}/c3"), None, &[403], "no relationship found"),
        ("every ConfigMap", "GET", cm.to_string(), None, &[403], "can only get individual resources"),
        ("a restricted label on its Node", "PATCH", "/api/v1/nodes/n1".into(), Some(r#"{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}"#.into()), &[403], "is not allowed to modify labels: node-role.kubernetes.io/control-plane"),
        ("a label on its Node", "PATCH", "/api/v1/nodes/n1".into(), Some(r#"{"metadata":{"labels":{"kubernetes.io/hostname":"n1"}}}"#.into()), &[200], ""),
        ("another Node, created", "POST", "/api/v1/nodes".into(), Some(node("n3", "")), &[403], "node \"n1\" is not allowed to modify node \"n3\""),
        ("another Node", "PUT", "/api/v1/nodes/n2".into(), Some(node("n2", "")), &[403], "node \"n1\" is not allowed to modify node \"n2\""),
        ("taints on its Node", "PATCH", "/api/v1/nodes/n1".into(), Some(taint.into()), &[403], "is not allowed to modify taints"),
        ("the status of another node's pod", "PATCH", format!("{pods}/p2/status"), Some(running.into()), &[403], "can only update pod status for pods with spec.nodeName set to itself"),
        ("the status of its pod", "PATCH", format!("{pods}/p1/status"), Some(running.into()), &[200], ""),
        ("its pod's spec", "PATCH", format!("{pods}/p1"), Some(r#"{"metadata":{"labels":{"a":"b"}}}"#.into()), &[403], "cannot patch resource \"pods\""),
        ("another node's pod, deleted", "DELETE", format!("{pods}/p2"), None, &[403], "can only delete pods with spec.nodeName set to itself"),
        ("a pod, created", "POST", pods.to_string(), Some(r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p3"},"spec":{"containers":[{"name":"c","image":"demo"}]}}"#.into()), &[403], "cannot create resource \"pods\""),
        ("another node's Lease", "POST", leases.to_string(), Some(lease("n2")), &[403], "can only access its own node lease"),
        ("its Lease", "POST", leases.to_string(), Some(lease("n1")), &[201], ""),
        ("a namespace, deleted", "DELETE", "/api/v1/namespaces/default".into(), None, &[403], "cannot delete resource \"namespaces\""),
        ("a token for another node's pod", "POST", "/api/v1/namespaces/default/serviceaccounts/default/token".into(), Some(token_for("p2")), &[403], "may only request tokens for pods bound to it"),
        ("a token bound to nothing", "POST", "/api/v1/namespaces/default/serviceaccounts/default/token".into(), Some("{}".into()), &[403], "may only request tokens bound to its pods"),
        ("a token for its pod", "POST", "/api/v1/namespaces/default/serviceaccounts/default/token".into(), Some(token_for("p1")), &[201], ""),
        ("a token of an account no pod of its runs as", "POST", "/api/v1/namespaces/default/serviceaccounts/other/token".into(), Some(token_for("p1")), &[403], "no relationship found"),
        ("its pod, deleted", "DELETE", format!("{pods}/p1"), None, &[200, 202], ""),
    ];
    let mut failures = Vec::new();
    for (what, method, path, body, codes, says) in &cases {
        let (code, out) = call(&s, &n1, method, path, body.as_deref());
        if !codes.contains(&code) || !message(&out).contains(says) {
            failures.push(format!("{what}: {method} {path}: {code} {out}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // What was refused left everything as it was.
    let (_, p2) = call(&s, &admin, "GET", &format!("{pods}/p2"), None);
    let p2: Value = serde_json::from_str(&p2).unwrap();
    assert!(
        p2["metadata"]["deletionTimestamp"].is_null() && p2["status"]["phase"] == "Pending",
        "{p2}"
    );
    let (_, n1_node) = call(&s, &admin, "GET", "/api/v1/nodes/n1", None);
    let n1_node: Value = serde_json::from_str(&n1_node).unwrap();
    assert!(n1_node["spec"]["taints"].is_null(), "{n1_node}");
}

#[test]
fn service_account_tokens_stand_for_their_account_while_it_lasts() {
    let Some(bin) = require_tool("kubectl") else {
        return;
    };
    let s = Server::start_secure(Path::new(SKIFF), &[]);
    s.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bot, namespace: default}\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bot-views, namespace: default}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{kind: ServiceAccount, name: bot}]\n",
    );
    let token = ok(
        kubectl(&bin, &s, &["create", "token", "bot"]),
        "kubectl create token",
    );
    let token = token.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let as_bot = |path: &str| call(&s, &bearer_flags(&token), "GET", path, None);
    let (code, body) = until(|| {
        let r = as_bot("/api/v1/namespaces/default/pods");
        (r.0 != 403).then_some(r)
    });
    assert_eq!(code, 200, "{body}");
    let (code, body) = as_bot("/api/v1/namespaces/kube-system/pods");
    assert_eq!(code, 403);
    assert!(
        message(&body).contains("User \"system:serviceaccount:default:bot\" cannot list"),
        "{body}"
    );
    // Too short a life is refused; an audience elsewhere does not log in here.
    let out = kubectl(&bin, &s, &["create", "token", "bot", "--duration", "5m"]);
    assert!(!out.status.success());
    let other = ok(
        kubectl(
            &bin,
            &s,
            &["create", "token", "bot", "--audience", "https://elsewhere"],
        ),
        "kubectl create token --audience",
    );
    assert_eq!(
        call(
            &s,
            &bearer_flags(other.trim()),
            "GET",
            "/api/v1/namespaces/default/pods",
            None
        )
        .0,
        401
    );
    // A token for a missing account: 404, nothing made.
    let out = kubectl(&bin, &s, &["create", "token", "nobody"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    // Once the account goes (even if one of its name comes back), its
    // tokens prove nothing.
    ok(
        kubectl(&bin, &s, &["delete", "serviceaccount", "bot"]),
        "kubectl delete sa",
    );
    s.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: bot, namespace: default}\n");
    assert_eq!(as_bot("/api/v1/namespaces/default/pods").0, 401);
}

#[test]
fn secrets_are_encrypted_at_rest_in_both_stores() {
    if require_tool("curl").is_none() || require_tool("etcdctl").is_none() {
        return;
    }
    let admin = |s: &Server| s.curl_admin()[2..].to_vec();
    let secret = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"db"},"stringData":{"password":"hunter2-plain"},"data":{"user":"YWRtaW4tYmFzZTY0"}}"#;
    let secrets = "/api/v1/namespaces/default/secrets";

    // The embedded store: the value comes back, the file never holds it.
    let s = Server::start_secure(Path::new(SKIFF), &[]);
    let (code, body) = call(&s, &admin(&s), "POST", secrets, Some(secret));
    assert_eq!(code, 201, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    // stringData is merged into data and not kept; the type defaults.
    assert_eq!(v["data"]["password"], "aHVudGVyMi1wbGFpbg==");
    assert!(v.get("stringData").is_none(), "{v}");
    assert_eq!(v["type"], "Opaque");
    let (_, got) = call(&s, &admin(&s), "GET", &format!("{secrets}/db"), None);
    let got: Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["data"]["user"], "YWRtaW4tYmFzZTY0");
    let file = std::fs::read(s.data_dir().join("skiff.redb")).unwrap();
    for plain in [
        &b"hunter2-plain"[..],
        b"aHVudGVyMi1wbGFpbg==",
        b"YWRtaW4tYmFzZTY0",
    ] {
        assert!(
            !file.windows(plain.len()).any(|w| w == plain),
            "the store file holds {:?} in plain text",
            String::from_utf8_lossy(plain)
        );
    }
    assert!(
        file.windows(18).any(|w| w == b"k8s:enc:aesgcm:v1:"),
        "a sealed value is stored"
    );
    // Bad input: data that is not base64, a tls Secret without its key.
    let bad = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"bad"},"data":{"k":"not base64!"}}"#;
    let (code, body) = call(&s, &admin(&s), "POST", secrets, Some(bad));
    assert_eq!(code, 422, "{body}");
    let tls = r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"t"},"type":"kubernetes.io/tls","stringData":{"tls.crt":"x"}}"#;
    let (code, body) = call(&s, &admin(&s), "POST", secrets, Some(tls));
    assert_eq!(code, 422, "{body}");
    assert!(message(&body).contains("data[tls.key]"), "{body}");
    // kubectl's protobuf body.
    if let Some(bin) = require_tool("kubectl") {
        ok(
            kubectl(
                &bin,
                &s,
                &[
                    "create",
                    "secret",
                    "generic",
                    "k",
                    "--from-literal=token=s3cr3t-kubectl",
                ],
            ),
            "kubectl create secret",
        );
        let out = ok(
            kubectl(
                &bin,
                &s,
                &["get", "secret", "k", "-o", "jsonpath={.data.token}"],
            ),
            "kubectl get secret",
        );
        assert_eq!(out, "czNjcjN0LWt1YmVjdGw=");
    }
    drop(s);

    // etcd: sealed values only; another server of the cluster opens them;
    // a tampered value is an error, never garbage.
    let Some(etcd) = skiff_testkit::EtcdServer::start() else {
        return;
    };
    let store = etcd.url();
    let endpoint = store.trim_start_matches("etcd://").to_string();
    let (a, b, _joined) = one_cluster_on(&store);
    let (code, body) = call(&a, &admin(&a), "POST", secrets, Some(secret));
    assert_eq!(code, 201, "{body}");
    let (code, body) = call(&b, &admin(&b), "GET", &format!("{secrets}/db"), None);
    assert_eq!(code, 200, "the other server opens it: {body}");
    let etcdctl = |args: &[&str]| {
        let out = Command::new("etcdctl")
            .args(["--endpoints", &endpoint])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let raw = etcdctl(&["get", "--prefix", "/skiff/"]);
    for plain in [&b"hunter2-plain"[..], b"aHVudGVyMi1wbGFpbg=="] {
        assert!(
            !raw.windows(plain.len()).any(|w| w == plain),
            "etcd holds a Secret in plain text"
        );
    }
    let stored = etcdctl(&[
        "get",
        "/skiff/core/secrets/default/db",
        "--print-value-only",
    ]);
    assert!(
        stored.starts_with(b"k8s:enc:aesgcm:v1:"),
        "{}",
        String::from_utf8_lossy(&stored)
    );
    let mut tampered = stored.clone();
    while tampered.last() == Some(&b'\n') {
        tampered.pop();
    }
    let n = tampered.len();
    tampered[n - 5] ^= 0x01;
    // The value through stdin: it is binary.
    let mut put = Command::new("etcdctl")
        .args([
            "--endpoints",
            &endpoint,
            "put",
            "/skiff/core/secrets/default/db",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        put.stdin.take().unwrap().write_all(&tampered).unwrap();
    }
    let out = put.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, body) = call(&a, &admin(&a), "GET", &format!("{secrets}/db"), None);
    assert_eq!(code, 500, "{body}");
    assert!(message(&body).contains("cannot be decrypted"), "{body}");
}

#[test]
fn components_write_as_their_own_identities() {
    let s = Server::start_secure(Path::new(SKIFF), &[]);
    // A simulated Ready node (as the admin), for the scheduler to bind to.
    let sim = Command::new(SKIFF)
        .args([
            "sim",
            "nodes",
            "--count",
            "1",
            "--pods-running",
            "--kubeconfig",
        ])
        .arg(s.kubeconfig())
        .env("HOME", s.home.path())
        .env_remove("SKIFF_SERVER")
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _sim = skiff_testkit::KillOnDrop(sim);
    s.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: ids}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {name: placed, namespace: ids}\n\
         spec: {containers: [{name: c, image: demo}]}\n",
    );
    // The scheduler binds it (an update of the pod); the ServiceAccount
    // controller gives the namespace its `default` account.
    let by = |l: &Value, resource: &str, name: &str| {
        l["objectRef"]["resource"] == resource
            && l["objectRef"]["namespace"] == "ids"
            && l["objectRef"]["name"] == name
            && l["responseStatus"]["code"]
                .as_u64()
                .is_some_and(|c| c < 300)
    };
    let lines = audit_lines(&s, |ls| {
        ls.iter()
            .any(|l| by(l, "pods", "placed") && l["verb"] == "update")
            && ls.iter().any(|l| by(l, "serviceaccounts", "default"))
    });
    let bind = lines
        .iter()
        .find(|l| by(l, "pods", "placed") && l["verb"] == "update")
        .unwrap();
    assert_eq!(bind["user"]["username"], "system:kube-scheduler", "{bind}");
    let sa = lines
        .iter()
        .find(|l| by(l, "serviceaccounts", "default"))
        .unwrap();
    assert_eq!(
        sa["user"]["username"], "system:kube-controller-manager",
        "{sa}"
    );
}
