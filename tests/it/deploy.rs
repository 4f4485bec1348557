//! The deployment files (`Dockerfile`, `deploy/k8s/`, `deploy/systemd/`) parse and start the real
//! binary's subcommands with flags it has: every command line they hold is run with `--help` appended
//! (clap rejects an unknown flag or a bad value before it prints help), the ConfigMap's `qoeflow.toml`
//! and the manifests' `QOEFLOW_*` variables load as a valid configuration, and each workload's probes
//! name endpoints its role serves. No container builder can pull base images in CI, so the image itself
//! is not built here.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::repo_root;

/// Runs `qoeflow <args> --help` with `env`; panics with `what` if clap refuses the command line.
fn assert_command_line(what: &str, args: &[String], env: &[(String, String)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_qoeflow"))
        .args(args)
        .arg("--help")
        .envs(env.iter().cloned())
        .output()
        .expect("run qoeflow");
    assert!(
        out.status.success(),
        "{what}: `qoeflow {}` is not a valid command line: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The subcommand of a command line (after the global `--config FILE`).
fn subcommand(args: &[String]) -> &str {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            it.next();
        } else if !a.starts_with('-') {
            return a;
        }
    }
    panic!("no subcommand in {args:?}")
}

/// Replaces `$(VAR)` (Kubernetes) and `${VAR}`/`%i` (systemd) references with sample values.
fn expand(arg: &str, values: &BTreeMap<&str, &str>) -> String {
    let mut out = arg.replace("%i", "0");
    for (k, v) in values {
        out = out
            .replace(&format!("$({k})"), v)
            .replace(&format!("${{{k}}}"), v);
    }
    assert!(
        !out.contains("$(") && !out.contains("${"),
        "unexpanded variable in {arg:?}"
    );
    out
}

#[test]
fn deployment_files_start_real_subcommands_with_real_flags_and_valid_configuration() {
    let root = repo_root();
    let tmp = tempfile::tempdir().expect("tmp");
    let mut files: Vec<_> = std::fs::read_dir(root.join("deploy/k8s"))
        .expect("deploy/k8s")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let yaml = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))"])
        .args(&files)
        .output()
        .expect("python3 (deploy/test.sh installs PyYAML)");
    assert!(
        yaml.status.success(),
        "the manifests do not parse as YAML: {}",
        String::from_utf8_lossy(&yaml.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&yaml.stdout).expect("json");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "Kustomization",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in deploy/k8s: {kinds:?}");
    }
    // Everything the kustomization lists exists.
    let kustomization = docs
        .iter()
        .find(|d| d["kind"] == "Kustomization")
        .expect("kustomization");
    for r in kustomization["resources"].as_array().expect("resources") {
        assert!(
            root.join("deploy/k8s")
                .join(r.as_str().expect("path"))
                .is_file(),
            "kustomization names a missing {r}"
        );
    }

    // The ConfigMap's qoeflow.toml, where the manifests mount it.
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("configmap");
    let toml_path = tmp.path().join("qoeflow.toml");
    std::fs::write(
        &toml_path,
        config["data"]["qoeflow.toml"]
            .as_str()
            .expect("qoeflow.toml"),
    )
    .expect("write toml");
    let toml = toml_path.to_str().expect("utf-8").to_owned();
    let secret = docs
        .iter()
        .find(|d| d["kind"] == "Secret")
        .expect("secret example");
    let samples = BTreeMap::from([
        ("INGEST_KEY", "k1"),
        ("HEALTH_LISTEN", "0.0.0.0:9090"),
    ]);

    let mut roles = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
    {
        let name = doc["metadata"]["name"].as_str().expect("name");
        for c in doc["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
        {
            let args: Vec<String> = c["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| expand(a.as_str().expect("string arg"), &samples))
                .map(|a| {
                    if a == "/etc/qoeflow/qoeflow.toml" {
                        toml.clone()
                    } else {
                        a
                    }
                })
                .collect();
            // The settings the pod's environment gives (secrets from the example's values).
            let mut env = Vec::new();
            for e in c["env"].as_array().into_iter().flatten() {
                let key = e["name"].as_str().expect("env name");
                let value = match (
                    &e["value"],
                    &e["valueFrom"]["secretKeyRef"]["key"],
                    &e["valueFrom"]["configMapKeyRef"]["key"],
                ) {
                    (Value::String(v), _, _) => v.clone(),
                    (_, Value::String(k), _) => secret["stringData"][k.as_str()]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: secret has no {k}"))
                        .to_owned(),
                    (_, _, Value::String(k)) => config["data"][k.as_str()]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: configmap has no {k}"))
                        .to_owned(),
                    _ => "0".to_owned(),
                };
                env.push((key.to_owned(), value));
            }
            assert_command_line(name, &args, &env);
            // The configuration loads with this environment: the file and every QOEFLOW_* key are valid.
            let settings: Vec<_> = env
                .iter()
                .filter(|(k, _)| k.starts_with("QOEFLOW_"))
                .cloned()
                .collect();
            let dataset = tmp.path().join("dataset");
            let out = Command::new(env!("CARGO_BIN_EXE_qoeflow"))
                .args([
                    "--config",
                    &toml,
                    "query",
                    "--dataset",
                    dataset.to_str().expect("utf-8"),
                    "SELECT 1",
                ])
                .envs(settings)
                .output()
                .expect("run qoeflow query");
            assert!(
                out.status.success(),
                "{name}: its configuration does not load: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Probes ask the port the role listens on, for endpoints it serves.
            let role = subcommand(&args).to_owned();
            let served: &[&str] = match role.as_str() {
                "ingest" | "pipeline" | "serve" => &["/healthz", "/readyz", "/metrics"],
                "query-server" => &["/healthz"],
                other => panic!("{name} runs {other}, not a server role"),
            };
            for probe in ["readinessProbe", "livenessProbe"] {
                let path = c[probe]["httpGet"]["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name} has no {probe}"));
                assert!(
                    served.contains(&path),
                    "{name}: {probe} asks {path}, which `qoeflow {role}` does not serve"
                );
            }
            let port = c["ports"][0]["containerPort"]
                .as_u64()
                .expect("container port");
            assert!(
                args.iter().any(|a| a.ends_with(&format!(":{port}"))),
                "{name} listens where its port {port} is: {args:?}"
            );
            // Pipeline workers are elastic: a Deployment of any size, sharing the lineages by lease.
            if role == "pipeline" {
                assert_eq!(doc["kind"], "Deployment", "{name}: elastic workers need no stable identity");
                let toml_text = config["data"]["qoeflow.toml"].as_str().expect("qoeflow.toml");
                assert!(
                    toml_text.contains("lease_table = ") || args.iter().any(|a| a == "--lease-table"),
                    "{name}: the workers share the stream through a lease table"
                );
            }
            roles.push(role);
        }
    }
    roles.sort();
    assert_eq!(
        roles,
        ["ingest", "pipeline", "query-server"],
        "a workload per production role"
    );

    // systemd units: every ExecStart.
    let mut units = 0;
    for entry in std::fs::read_dir(root.join("deploy/systemd")).expect("deploy/systemd") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("unit");
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{} has no ExecStart", path.display()));
        let mut words = exec.split_whitespace();
        assert_eq!(
            words.next(),
            Some("/usr/local/bin/qoeflow"),
            "{}",
            path.display()
        );
        let args: Vec<String> = words
            .map(|w| expand(w, &samples))
            .map(|a| {
                if a == "/etc/qoeflow/qoeflow.toml" {
                    toml.clone()
                } else {
                    a
                }
            })
            .collect();
        assert_command_line(&path.display().to_string(), &args, &[]);
        assert!(
            text.contains("[Install]") && text.contains("Restart=always"),
            "{}",
            path.display()
        );
        units += 1;
    }
    assert_eq!(
        units, 4,
        "units for serve, ingest, pipeline workers and the query server"
    );

    // The image's default command.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.matches("\nFROM ").count() >= 2,
        "a multi-stage build"
    );
    let cmd = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("CMD "))
        .expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("CMD in exec form (a JSON array)");
    assert_command_line("Dockerfile CMD", &cmd, &[]);
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/qoeflow"]"#));
    assert!(Path::new(&root.join(".dockerignore")).is_file());
}
