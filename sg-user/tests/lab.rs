//! `sgctl lab` end to end, through the `sgctl` binary: up, verify, down on
//! the demo's embedded example and every example config; a broken data path
//! (the compiler's fault switch, set only in the child's environment) makes
//! verify fail and name the flow; down leaves nothing and touches nothing
//! else. Needs root. Each test uses its own lab name, so they run in parallel.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use sg_user::{compile::FAULT_DROP_FIRST_RULE, lab, lab::demo, require_root};

fn sgctl(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sgctl"));
    cmd.args(args).env_remove(FAULT_DROP_FIRST_RULE);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("running sgctl")
}

/// `sgctl lab diff -c OLD -c2 NEW`.
fn lab_diff(old: &Path, new: &Path) -> Output {
    let (old, new) = (old.to_str().unwrap(), new.to_str().unwrap());
    sgctl(&["lab", "diff", "-c", old, "-c2", new], &[])
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Takes a lab down when the test ends, also when it panics.
struct Down(&'static str);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = sgctl(&["lab", "down", "--name", self.0], &[]);
    }
}

/// The demo's config in a file of its own.
fn demo_config(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sg-lab-test-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("demo.yaml");
    std::fs::write(&path, demo::CONFIG).unwrap();
    path
}

/// up, verify (text and JSON), down; asserts zero disagreements, real
/// reachable and blocked flows, and nothing left behind.
fn up_verify_down(name: &'static str, config: &Path, attach: &[&str]) {
    let _down = Down(name);
    let mut args = vec!["lab", "up", "--name", name, "-c", config.to_str().unwrap()];
    for a in attach {
        args.extend(["--attach", a]);
    }
    let up = sgctl(&args, &[]);
    assert!(up.status.success(), "lab up failed: {}", text(&up));
    assert!(
        String::from_utf8_lossy(&up.stdout).contains(&format!("@sgl-{name}-")),
        "up shows the interface mapping: {}",
        text(&up)
    );

    let verify = sgctl(&["lab", "verify", "--name", name], &[]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "verify must agree with the evaluator: {}",
        text(&verify)
    );
    assert!(out.contains(" 0 disagreements"), "{}", text(&verify));

    let json = sgctl(&["lab", "verify", "--name", name, "--json"], &[]);
    assert_eq!(json.status.code(), Some(0), "{}", text(&json));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("verify --json");
    assert_eq!(v["disagreements"], 0);
    let flows = v["flows"].as_array().expect("flows");
    let count = |observed: bool, family: &str| {
        flows
            .iter()
            .filter(|f| f["observed"] == observed && f["family"] == family)
            .count()
    };
    // Real packets both ways: something reachable and something blocked
    // (an example may expose nothing over one family), both families probed.
    assert!(
        count(true, "IPv4") + count(true, "IPv6") > 0
            && count(false, "IPv4") + count(false, "IPv6") > 0,
        "some flows reachable and some blocked ({} flows)",
        flows.len()
    );
    for family in ["IPv4", "IPv6"] {
        assert!(
            count(true, family) + count(false, family) > 0,
            "{family} probed"
        );
    }

    let down = sgctl(&["lab", "down", "--name", name], &[]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(
        lab::leftovers(name),
        Vec::<String>::new(),
        "down leaves nothing"
    );
}

#[test]
fn demo_example_verifies() {
    require_root!();
    up_verify_down("tdemo", &demo_config("demo"), &[]);
}

#[test]
fn web_tier_example_verifies() {
    require_root!();
    up_verify_down("tweb", &examples().join("web-tier.yaml"), &[]);
}

#[test]
fn aws_example_verifies() {
    require_root!();
    up_verify_down(
        "taws",
        &examples().join("aws-describe-security-groups.json"),
        &[
            "eth0@web=sg-0123456789abcdef1",
            "eth0@db=sg-0123456789abcdef2",
            "eth0@app=sg-0a1b2c3d4e5f60718",
        ],
    );
}

#[test]
fn host_example_verifies() {
    require_root!();
    up_verify_down("thost", &examples().join("host.yaml"), &[]);
}

#[test]
fn sidecar_example_verifies() {
    require_root!();
    up_verify_down("tside", &examples().join("sidecar.yaml"), &[]);
}

#[test]
fn container_host_example_verifies() {
    require_root!();
    up_verify_down("tctrh", &examples().join("container-host.yaml"), &[]);
}

#[test]
fn every_example_config_is_covered() {
    // A new example must get a lab test above.
    let mut names: Vec<String> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "aws-describe-security-groups.json",
            "container-host.yaml",
            "host.yaml",
            "sidecar.yaml",
            "web-tier.yaml"
        ]
    );
}

#[test]
fn a_broken_data_path_fails_verify_and_names_the_flow() {
    require_root!();
    let _down = Down("tfault");
    let config = demo_config("fault");
    // The fault is compiled into the kernel policy by `up`; only that child
    // process sees the variable.
    let up = sgctl(
        &[
            "lab",
            "up",
            "--name",
            "tfault",
            "-c",
            config.to_str().unwrap(),
        ],
        &[(FAULT_DROP_FIRST_RULE, "1")],
    );
    assert!(up.status.success(), "{}", text(&up));
    let verify = sgctl(&["lab", "verify", "--name", "tfault"], &[]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    // The switch drops each interface's first inbound rule. web's is HTTP
    // from 0.0.0.0/0: IPv4 tcp/80 into web breaks, IPv6 tcp/80 (its own
    // rule) does not; db's is MySQL from sg-web.
    for from in ["db", "in-pl-office", "out-pl-office"] {
        let line = format!("✗ {from} → web tcp/80 IPv4");
        assert!(out.contains(&line), "names `{line}`: {}", text(&verify));
    }
    assert!(
        out.contains("the rules say reachable (egress:")
            && out.contains("sg-web/in/tcp:80/0.0.0.0/0), observed blocked"),
        "says what the rules expect and what happened: {}",
        text(&verify)
    );
    for line in ["✗ web → db tcp/3306 IPv4", "✗ web → db tcp/3306 IPv6"] {
        assert!(out.contains(line), "names `{line}`: {}", text(&verify));
    }
    assert!(!out.contains("→ web tcp/80 IPv6"), "{}", text(&verify));
    assert!(out.contains(" 5 disagreements"), "{}", text(&verify));
}

#[test]
fn down_removes_everything_and_nothing_else() {
    require_root!();
    let _down = Down("tdown");
    // Bystanders: a namespace whose name shares the lab's prefix letters but
    // not its prefix, and a harness namespace.
    let lookalike = "sgl-tdown0-keep";
    assert!(
        Command::new("ip")
            .args(["netns", "add", lookalike])
            .status()
            .unwrap()
            .success()
    );
    let harness = sg_user::sys::netns::Netns::create("keep").unwrap();
    let config = demo_config("down");
    let up = || {
        let o = sgctl(
            &[
                "lab",
                "up",
                "--name",
                "tdown",
                "-c",
                config.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
        lab::LabState::read("tdown").unwrap()
    };
    // A lab left running (as after a crash) is replaced by the next `up`.
    let first = up();
    let second = up();
    assert!(
        !lab::server_running(&first),
        "the first lab's listeners were stopped"
    );
    assert!(lab::server_running(&second));
    assert!(!lab::leftovers("tdown").is_empty());

    let down = sgctl(&["lab", "down", "--name", "tdown"], &[]);
    assert!(down.status.success(), "{}", text(&down));
    assert_eq!(lab::leftovers("tdown"), Vec::<String>::new());
    assert!(!lab::server_running(&second), "listeners stopped");
    assert!(
        !Path::new("/sys/fs/bpf/sg/netns-sgl-tdown-web").exists(),
        "pins removed"
    );
    assert!(
        !Path::new("/run/sgctl/netns-sgl-tdown-web").exists(),
        "apply state removed"
    );
    assert!(Path::new("/run/netns").join(lookalike).exists());
    assert!(Path::new("/run/netns").join(harness.name()).exists());
    let again = sgctl(&["lab", "down", "--name", "tdown"], &[]);
    assert!(
        again.status.success(),
        "down twice is fine: {}",
        text(&again)
    );
    sg_user::sys::netns::delete_netns(lookalike);
}

#[test]
fn diff_lists_opened_and_closed_flows_offline() {
    let dir = std::env::temp_dir().join(format!("sg-lab-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let new = dir.join("new.yaml");
    let old = examples().join("web-tier.yaml");
    let text_old = std::fs::read_to_string(&old).unwrap();
    std::fs::write(
        &new,
        text_old.replace(
            "{ protocol: tcp, ports: 22, prefix_list: pl-office,",
            "{ protocol: tcp, ports: 2222, prefix_list: pl-office,",
        ),
    )
    .unwrap();
    let o = lab_diff(&old, &new);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    for line in [
        "+ in-pl-office → web1 tcp/2222 IPv4",
        "+ in-pl-office → web2 tcp/2222 IPv6",
        "- in-pl-office → web1 tcp/22 IPv4",
        "4 opened, 4 closed",
    ] {
        assert!(out.contains(line), "`{line}` in: {}", text(&o));
    }
    let same = lab_diff(&old, &old);
    assert!(
        String::from_utf8_lossy(&same.stdout).contains("0 opened, 0 closed"),
        "{}",
        text(&same)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
