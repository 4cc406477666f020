//! The offline `sgctl` commands as a user runs them: `check` over the AWS
//! scenario table, `validate`, `lint` and `import-aws` exit codes and output.
//! No root, no kernel; the interfaces do not exist on this machine.

mod model_scenarios;

use std::{
    io::{Read as _, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use model_scenarios::{CONFIG, SCENARIOS, What};

fn sgctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sgctl"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running sgctl")
}

/// `sgctl check -c CFG` and then `rest`, split at spaces as a shell would.
fn check_args<'a>(cfg: &'a str, rest: &'a str) -> Vec<&'a str> {
    let mut args = vec!["check", "-c", cfg];
    args.extend(rest.split_whitespace());
    args
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
        // check answers like grep: 0 allowed, 1 denied.
        let code = Some(if sc.allowed { 0 } else { 1 });
        assert_eq!(text.status.code(), code, "{}: {}", sc.name, stderr(&text));
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
        assert_eq!(out.status.code(), code, "{}: {}", sc.name, stderr(&out));
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
    let o = sgctl(&check_args(
        &cfg,
        "--iface eth0@web1 --in --proto 6 --peer 198.18.1.1 --port 443",
    ));
    assert!(stdout(&o).starts_with("allow"), "{}", stdout(&o));
    let o = sgctl(&check_args(
        &cfg,
        "--iface eth0 --netns db1 --in --proto tcp --peer 198.18.0.10 --port 3306",
    ));
    assert!(
        stdout(&o).starts_with("allow"),
        "--netns form: {}{}",
        stdout(&o),
        stderr(&o)
    );
    for (args, needle) in [
        (
            "--iface eth9 --in --proto tcp --peer 198.18.1.1 --port 1",
            "not in the config",
        ),
        (
            "--iface eth0 --in --proto tcp --peer 198.18.1.1 --port 1",
            "NAME@NETNS",
        ),
        (
            "--iface eth0@web1 --in --proto tcp --peer 198.18.1.1",
            "needs --port",
        ),
        (
            "--iface eth0@web1 --in --proto icmp --peer 198.18.1.1",
            "--icmp-type",
        ),
        (
            "--iface eth0@web1 --in --proto bogus --peer 198.18.1.1",
            "--proto",
        ),
        (
            "--iface eth0@web1 --proto tcp --peer 198.18.1.1 --port 1",
            "--in",
        ),
    ] {
        let a = check_args(&cfg, args);
        let o = sgctl(&a);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{a:?}: {}", stderr(&o));
    }
    let bad = write(
        &dir,
        "bad.yaml",
        "security_groups:\n  - id: g\n    ingress: [{ protocol: tcp, cidr: 198.18.0.1/15 }]\n",
    );
    let o = sgctl(&check_args(
        &bad,
        "--iface e0 --in --proto tcp --peer 198.18.1.1 --port 1",
    ));
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
    assert_eq!(
        o.status.code(),
        Some(2),
        "an invalid config is invalid input"
    );
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
        let o = sgctl(&check_args(
            cfg,
            "--attach eth0=sg-0123456789abcdef1 --iface eth0 --in --proto tcp --peer 203.0.113.5 --port 22 --json",
        ));
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
    // Outbound: only to a destination on the link (this interface lists no
    // address, so only link-local and link-scope multicast are known to be).
    assert_eq!(check("--out", "ff02::1", "136", "255"), (true, true));
    assert!(!check("--out", "2001:db8::1", "136", "255").1);
    std::fs::remove_dir_all(dir).ok();
}

/// Standard input for [`sgctl_bounded`]: this byte, this many times.
type Feed = (u8, usize);

/// How a child run under [`sgctl_bounded`] ended.
struct Bounded {
    code: Option<i32>,
    signal: Option<i32>,
    /// Standard output and standard error.
    output: String,
    /// Peak resident memory of the child, KiB (getrusage via wait4).
    max_rss_kib: i64,
}

/// Runs sgctl with its address space capped at 1 GiB (a runaway read aborts
/// instead of eating the machine), feeding `input` (if any) to its standard
/// input, and measures its peak memory.
#[expect(
    clippy::zombie_processes,
    reason = "reaped with wait4, which also gives its resource usage"
)]
fn sgctl_bounded(args: &[&str], input: Option<Feed>) -> Bounded {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sgctl"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let cap = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("running sgctl");
    let feeder = input.map(|(byte, len)| {
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            let chunk = vec![byte; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                // sgctl stops reading at the limit: a broken pipe is expected.
                if stdin.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        })
    });
    let mut out = child.stdout.take().expect("piped stdout");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).map(|_| s)
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut err)
        .expect("reading stderr");
    let out = out.join().expect("stdout reader").expect("reading stdout");
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: waits for our own child, with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    if let Some(f) = feeder {
        f.join().expect("feeder thread");
    }
    Bounded {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        output: out + &err,
        max_rss_kib: usage.ru_maxrss,
    }
}

#[test]
fn endless_and_oversized_input_is_refused_with_bounded_memory() {
    let dir = scratch("bounded");
    let imports = write(
        &dir,
        "imports.yaml",
        "import: /dev/zero\nsecurity_groups: []\n",
    );
    let cases: [(&str, Vec<&str>, Option<Feed>); 5] = [
        ("a device", vec!["validate", "-c", "/dev/zero"], None),
        (
            "50 MB through a pipe",
            vec!["validate", "-c", "-"],
            Some((b' ', 50_000_000)),
        ),
        ("an import", vec!["validate", "-c", &imports], None),
        ("import-aws", vec!["import-aws", "/dev/zero"], None),
        (
            "lint through a pipe",
            vec!["lint", "-c", "-"],
            Some((b'#', 50_000_000)),
        ),
    ];
    for (what, args, input) in cases {
        let b = sgctl_bounded(&args, input);
        assert_eq!(
            (b.code, b.signal),
            (Some(2), None),
            "{what}: refused as invalid input (exit 2), not crashed: {}",
            b.output
        );
        assert!(
            b.output.contains("more than 16 MiB"),
            "{what}: the message names the limit: {}",
            b.output
        );
        assert!(
            b.output.contains("split") && b.output.contains("import:"),
            "{what}: the message says how to proceed: {}",
            b.output
        );
        // The limit is 16 MiB: reading stops there (a 50 MB buffer, or an
        // endless one, would show here).
        assert!(
            b.max_rss_kib < 200 * 1024,
            "{what}: peak memory {} KiB",
            b.max_rss_kib
        );
    }
    // A config under the limit still reads from standard input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sgctl"))
        .args(["validate", "-c", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running sgctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            std::fs::read(examples().join("web-tier.yaml"))
                .unwrap()
                .as_slice(),
        )
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o).starts_with("<stdin>: valid"), "{}", stdout(&o));
    std::fs::remove_dir_all(dir).ok();
}

/// Runs sgctl with its standard output a pipe whose reader is already gone.
fn sgctl_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_sgctl"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("running sgctl");
    (o.status, stderr(&o))
}

#[test]
fn a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let web = examples().join("web-tier.yaml");
    let web = web.to_str().unwrap();
    let mut commands = vec![
        vec!["validate", "-c", web],
        vec!["lint", "-c", web, "--format", "json"],
        vec![
            "import-aws",
            "../examples/aws-describe-security-groups.json",
        ],
        check_args(
            web,
            "--iface eth0@web1 --in --proto tcp --peer 198.18.7.1 --port 443",
        ),
        vec!["--help"],
    ];
    if sg_user::sys::netns::is_root() {
        commands.push(vec!["status", "--json"]);
        commands.push(vec!["status"]);
    } else {
        eprintln!("skipping `status` into a closed pipe - needs root");
    }
    for args in commands {
        let (status, err) = sgctl_into_closed_pipe(&args);
        assert!(
            !err.contains("panicked") && status.code() != Some(101),
            "{args:?}: panicked on a closed pipe ({status}): {err}"
        );
        // Quiet: no message, and either a clean exit or SIGPIPE like any Unix tool.
        assert!(
            err.trim().is_empty() || err.contains("warning:"),
            "{args:?}: not quiet: {err}"
        );
        assert!(
            status.code() == Some(0) || status.signal() == Some(libc::SIGPIPE),
            "{args:?}: {status}: {err}"
        );
    }
}

#[test]
fn exit_codes_agree_across_subcommands() {
    let dir = scratch("exit-codes");
    let cfg = write(&dir, "ok.yaml", CONFIG);
    let bad = write(
        &dir,
        "bad.yaml",
        "security_groups:\n  - id: g\n    ingress: [{ protocol: tcp, cidr: 198.18.0.1/15 }]\ninterfaces: [{ name: e0, security_groups: [g] }]\n",
    );
    let check = |cfg: &str, port: &str| {
        sgctl(&check_args(
            cfg,
            &format!("--iface eth0@web1 --in --proto tcp --peer 198.18.1.1 --port {port}"),
        ))
    };
    // 0 = yes, 1 = no.
    assert_eq!(check(&cfg, "443").status.code(), Some(0), "allowed");
    let denied = check(&cfg, "7");
    assert_eq!(denied.status.code(), Some(1), "denied: {}", stdout(&denied));
    assert!(stdout(&denied).starts_with("deny"), "{}", stdout(&denied));
    // 2 = invalid input, whichever command reads the config.
    for args in [
        vec!["validate", "-c", &bad],
        vec!["lint", "-c", &bad],
        vec!["lab", "diff", "-c", &bad, "-c2", &cfg],
        vec!["lab", "diff", "-c", &cfg, "-c2", &bad],
        check_args(
            &bad,
            "--iface e0 --in --proto tcp --peer 198.18.1.1 --port 1",
        ),
        vec!["import-aws", &bad],
        vec!["validate", "-c", "/nonexistent/sg.yaml"],
        vec!["validate"],
        vec!["apply", "-c", "-"],
    ] {
        let o = sgctl(&args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    let o = sgctl(&["validate", "-c", &cfg]);
    assert_eq!(o.status.code(), Some(0));
    // 3 = the system failed (here: the output cannot be written), with the path.
    let aws = examples().join("aws-describe-security-groups.json");
    let o = sgctl(&[
        "import-aws",
        aws.to_str().unwrap(),
        "-o",
        "/nonexistent-dir/out.yaml",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent-dir/out.yaml"),
        "{}",
        stderr(&o)
    );
    // Documented where a user looks.
    let help = stdout(&sgctl(&["--help"]));
    for needle in [
        "Exit codes",
        "0  success",
        "1  the answer is",
        "2  invalid input",
        "3  the system failed",
    ] {
        assert!(
            help.contains(needle),
            "{needle:?} missing from --help:\n{help}"
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn metrics_takes_a_host_name() {
    // Standard input is refused after the flags are parsed and before
    // anything needs root: the answer shows whether --metrics parsed.
    let o = sgctl(&["run", "-c", "-", "--metrics", "localhost:9977"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("needs a config file, not standard input"),
        "localhost:9977 is accepted: {}",
        stderr(&o)
    );
    let o = sgctl(&["run", "-c", "-", "--metrics", "localhost"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("HOST:PORT"), "{}", stderr(&o));
}
