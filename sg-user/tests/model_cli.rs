//! The offline `sgctl` commands as a user runs them: `check` over the AWS
//! scenario table, `validate`, `lint` and `import-aws` exit codes and output.
//! No root, no kernel; the interfaces do not exist on this machine.

mod model_scenarios;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use model_scenarios::{CONFIG, SCENARIOS, What};

fn sgctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sgctl"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running sgctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A scratch directory unique to this test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sgctl-model-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p.to_string_lossy().into_owned()
}

#[test]
fn aws_scenarios_through_sgctl_check() {
    let dir = scratch("scenarios");
    let cfg = write(&dir, "scenarios.yaml", CONFIG);
    for sc in SCENARIOS {
        let mut args = vec![
            "check",
            "-c",
            &cfg,
            "--iface",
            sc.iface,
            if sc.inbound { "--in" } else { "--out" },
            "--peer",
            sc.peer,
        ];
        let (p, n1, n2);
        match sc.what {
            What::Port(proto, port) => {
                p = port.to_string();
                args.extend(["--proto", proto, "--port", &p]);
            }
            What::Icmp(proto, t, c) => {
                n1 = t.to_string();
                n2 = c.to_string();
                args.extend(["--proto", proto, "--icmp-type", &n1, "--icmp-code", &n2]);
            }
        }
        let text = sgctl(&args);
        assert_eq!(
            text.status.code(),
            Some(0),
            "{}: {}",
            sc.name,
            stderr(&text)
        );
        let first = stdout(&text)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            first,
            if sc.allowed { "allow" } else { "deny" },
            "{}: {}",
            sc.name,
            stdout(&text)
        );
        if sc.allowed {
            assert!(
                stdout(&text).contains(if sc.tracked { "tracked" } else { "untracked" }),
                "{}",
                sc.name
            );
        }
        args.push("--json");
        let out = sgctl(&args);
        assert_eq!(out.status.code(), Some(0), "{}: {}", sc.name, stderr(&out));
        let j: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
        assert_eq!(j["allowed"], sc.allowed, "{}", sc.name);
        assert_eq!(j["verdict"], if sc.allowed { "allow" } else { "deny" });
        assert!(j["tracked"].is_boolean(), "tracked is a boolean");
        if sc.allowed {
            assert_eq!(j["tracked"], sc.tracked, "{}", sc.name);
        }
        let ids: Vec<&str> = j["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| r["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, sc.rules, "{}", sc.name);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_takes_protocol_numbers_and_reports_usage_errors_with_exit_2() {
    let dir = scratch("check");
    let cfg = write(&dir, "c.yaml", CONFIG);
    let o = sgctl(&[
        "check",
        "-c",
        &cfg,
        "--iface",
        "eth0@web1",
        "--in",
        "--proto",
        "6",
        "--peer",
        "198.18.1.1",
        "--port",
        "443",
    ]);
    assert!(stdout(&o).starts_with("allow"), "{}", stdout(&o));
    let o = sgctl(&[
        "check",
        "-c",
        &cfg,
        "--iface",
        "eth0",
        "--netns",
        "db1",
        "--in",
        "--proto",
        "tcp",
        "--peer",
        "198.18.0.10",
        "--port",
        "3306",
    ]);
    assert!(
        stdout(&o).starts_with("allow"),
        "--netns form: {}{}",
        stdout(&o),
        stderr(&o)
    );
    for (args, needle) in [
        (
            vec![
                "--iface",
                "eth9",
                "--in",
                "--proto",
                "tcp",
                "--peer",
                "198.18.1.1",
                "--port",
                "1",
            ],
            "not in the config",
        ),
        (
            vec![
                "--iface",
                "eth0",
                "--in",
                "--proto",
                "tcp",
                "--peer",
                "198.18.1.1",
                "--port",
                "1",
            ],
            "NAME@NETNS",
        ),
        (
            vec![
                "--iface",
                "eth0@web1",
                "--in",
                "--proto",
                "tcp",
                "--peer",
                "198.18.1.1",
            ],
            "needs --port",
        ),
        (
            vec![
                "--iface",
                "eth0@web1",
                "--in",
                "--proto",
                "icmp",
                "--peer",
                "198.18.1.1",
            ],
            "--icmp-type",
        ),
        (
            vec![
                "--iface",
                "eth0@web1",
                "--in",
                "--proto",
                "bogus",
                "--peer",
                "198.18.1.1",
            ],
            "--proto",
        ),
        (
            vec![
                "--iface",
                "eth0@web1",
                "--proto",
                "tcp",
                "--peer",
                "198.18.1.1",
                "--port",
                "1",
            ],
            "--in",
        ),
    ] {
        let mut a = vec!["check", "-c", cfg.as_str()];
        a.extend(args);
        let o = sgctl(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{a:?}: {}", stderr(&o));
    }
    let bad = write(
        &dir,
        "bad.yaml",
        "security_groups:\n  - id: g\n    ingress: [{ protocol: tcp, cidr: 198.18.0.1/15 }]\n",
    );
    let o = sgctl(&[
        "check",
        "-c",
        &bad,
        "--iface",
        "e0",
        "--in",
        "--proto",
        "tcp",
        "--peer",
        "198.18.1.1",
        "--port",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("sgctl validate"), "{}", stderr(&o));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn validate_exit_codes_and_output() {
    let o = sgctl(&[
        "validate",
        "-c",
        examples().join("web-tier.yaml").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("valid: 2 group(s)"), "{}", stdout(&o));
    assert!(stdout(&o).contains("eth0@web1"), "{}", stdout(&o));

    let dir = scratch("validate");
    let bad = write(
        &dir,
        "bad.yaml",
        "security_groups:\n  - id: g\n    ingress:\n      - { protocol: tcp, ports: 70000, cidr: 198.18.1.7/24 }\n      - { protocol: icmp, icmp_code: 3, cidr: 198.18.0.0/15 }\ninterfaces:\n  - { name: e0 }\n",
    );
    let o = sgctl(&["validate", "-c", &bad]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    for needle in [
        "bad.yaml:4: error: group g, ingress rule 0",
        "198.18.1.0/24",
        "70000",
        "bad.yaml:5:",
        "code without a type",
        "no security groups",
        "invalid: 4 error(s)",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    let o = sgctl(&["validate", "-c", "/nonexistent/sg.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("-c/--config"), "{}", stderr(&o));
    // AWS JSON with --attach for an interface that does not exist here: a warning, not an error.
    let aws = examples().join("aws-describe-security-groups.json");
    let o = sgctl(&[
        "validate",
        "-c",
        aws.to_str().unwrap(),
        "--attach",
        "nosuch0@nons=sg-0123456789abcdef2",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("nosuch0@nons"), "{}", stdout(&o));
    assert!(stdout(&o).contains("warning:"), "{}", stdout(&o));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn lint_formats_and_deny() {
    let web = examples().join("web-tier.yaml");
    let o = sgctl(&["lint", "-c", web.to_str().unwrap(), "--deny", "warnings"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the example is clean:\n{}",
        stdout(&o)
    );

    let dir = scratch("lint");
    let risky = write(
        &dir,
        "risky.yaml",
        "security_groups:\n  - id: g\n    ingress:\n      - { protocol: tcp, ports: 22, cidr: 0.0.0.0/0 }\n      - { protocol: tcp, ports: \"1000-9000\", cidr: 198.18.0.0/15 }\ninterfaces:\n  - { name: e0, security_groups: [g] }\n",
    );
    let o = sgctl(&["lint", "-c", &risky]);
    assert_eq!(o.status.code(), Some(0), "no --deny: exit 0");
    assert!(
        stdout(&o).contains("SG001") && stdout(&o).contains("SG003"),
        "{}",
        stdout(&o)
    );
    let o = sgctl(&["lint", "-c", &risky, "--deny", "warnings"]);
    assert_eq!(o.status.code(), Some(1));
    let o = sgctl(&["lint", "-c", &risky, "--format", "json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let ids: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"SG001") && ids.contains(&"SG003"), "{ids:?}");
    assert!(
        j.as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"].is_string() && f["fix"].is_string())
    );
    // Raising the threshold silences SG003.
    let o = sgctl(&[
        "lint",
        "-c",
        &risky,
        "--max-port-range",
        "10000",
        "--format",
        "json",
    ]);
    assert!(!stdout(&o).contains("SG003"), "{}", stdout(&o));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn import_aws_prints_yaml_that_validates_and_matches() {
    let aws = examples().join("aws-describe-security-groups.json");
    let o = sgctl(&["import-aws", aws.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let yaml = stdout(&o);
    assert!(
        yaml.contains("security_groups:") && yaml.contains("sg-0123456789abcdef1"),
        "{yaml}"
    );
    let dir = scratch("import");
    let p = write(&dir, "imported.yaml", &yaml);
    let o = sgctl(&["validate", "-c", &p]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    // Same verdicts from the JSON and from the YAML.
    for cfg in [aws.to_str().unwrap(), p.as_str()] {
        let o = sgctl(&[
            "check",
            "-c",
            cfg,
            "--attach",
            "eth0=sg-0123456789abcdef1",
            "--iface",
            "eth0",
            "--in",
            "--proto",
            "tcp",
            "--peer",
            "203.0.113.5",
            "--port",
            "22",
            "--json",
        ]);
        let j: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)));
        assert_eq!(j["allowed"], true);
        assert_eq!(
            j["rules"][0]["id"],
            "sg-0123456789abcdef1/in/tcp:22/203.0.113.0/24"
        );
    }
    let not_aws = write(&dir, "native.json", "{\"security_groups\": []}");
    let o = sgctl(&["import-aws", &not_aws]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("describe-security-groups"),
        "{}",
        stderr(&o)
    );
    let out = dir.join("out.yaml");
    let o = sgctl(&[
        "import-aws",
        aws.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), yaml);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn check_answers_what_the_kernel_does_with_neighbour_discovery() {
    let dir = scratch("check-nd");
    let cfg = write(
        &dir,
        "c.yaml",
        "security_groups:\n  - id: a\n    ingress:\n      - { protocol: tcp, ports: 443, cidr: \"::/0\" }\ninterfaces:\n  - { name: eth0, security_groups: [a] }\n",
    );
    let check = |dir: &str, peer: &str, icmp_type: &str, hop: &str| {
        let o = sgctl(&[
            "check",
            "-c",
            &cfg,
            "--iface",
            "eth0",
            dir,
            "--proto",
            "icmpv6",
            "--peer",
            peer,
            "--icmp-type",
            icmp_type,
            "--hop-limit",
            hop,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", stdout(&o), stderr(&o)));
        (
            v["allowed"].as_bool().unwrap(),
            v["bypass"].as_bool().unwrap(),
        )
    };
    // Inbound solicitation with hop limit 255: infrastructure.
    assert_eq!(check("--in", "fe80::1", "135", "255"), (true, true));
    // A router advertisement that crossed a router: judged, and no rule allows it.
    assert_eq!(check("--in", "2001:db8::1", "134", "64"), (false, false));
    // Outbound: only to link-local or link-scope multicast.
    assert_eq!(check("--out", "ff02::1", "136", "255"), (true, true));
    assert!(!check("--out", "2001:db8::1", "136", "255").1);
    std::fs::remove_dir_all(dir).ok();
}
