//! TLS and authentication on the API port, against a real `skiff server
//! --tls on`: curl checking the server's CA, kubectl (1.32 and Debian's
//! 1.20) and the skiff CLI (tonic over rustls) with the admin kubeconfig,
//! bearer tokens from a token file, anonymous callers, a client
//! certificate from a CA the server does not trust, plain HTTP to the TLS
//! port.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use skiff_testkit::server::Server;
use skiff_testkit::{in_ci, require_tool};

const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");
const KUBECTL_1_20: &str = "/opt/kubernetes-client-1.20/usr/bin/kubectl";

/// curl's status code and body for `args`.
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
    let (code, _) = curl(&[
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
    assert_eq!(code, 401);

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
    let (code, body) = bearer("alice-token", "/api/v1/namespaces/default/configmaps/app");
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
        assert_eq!(code, 200, "{body}");
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

    // A client certificate from a CA the server does not trust: the
    // handshake fails, nothing is served.
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
    assert_eq!(
        code, 0,
        "a foreign certificate got an answer: {code} {body}"
    );

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
