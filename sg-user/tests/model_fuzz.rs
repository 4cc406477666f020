//! Nasty inputs: the corpus in tests/corpus (bad/ must fail with problems,
//! ok/ must load) and property tests that feed arbitrary and near-valid text
//! and bytes to the parsers. Nothing may panic. Case counts are bounded so
//! this runs in seconds; proptest keeps any failure it finds in
//! `model_fuzz.proptest-regressions` and replays it first.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sg_user::model::{self, Attachment};

fn corpus(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "corpus {kind} is empty");
    v
}

#[test]
fn every_bad_corpus_file_is_rejected_with_a_located_problem() {
    for path in corpus("bad") {
        let t = std::time::Instant::now();
        match model::load(&path) {
            Ok(m) => panic!(
                "{} should be rejected, loaded {} groups",
                path.display(),
                m.groups.len()
            ),
            Err(problems) => {
                assert!(
                    problems.iter().any(model::Problem::is_error),
                    "{}: {problems:?}",
                    path.display()
                );
                for p in &problems {
                    let text = p.to_string();
                    assert!(
                        text.contains(path.file_name().unwrap().to_str().unwrap()),
                        "{}: names the file: {text}",
                        path.display()
                    );
                    assert!(
                        !p.fix.is_empty(),
                        "{}: says what to change: {text}",
                        path.display()
                    );
                }
            }
        }
        assert!(
            t.elapsed().as_secs() < 5,
            "{} took {:?}",
            path.display(),
            t.elapsed()
        );
    }
}

#[test]
fn every_ok_corpus_file_loads() {
    for path in corpus("ok") {
        model::load(&path).unwrap_or_else(|p| panic!("{}: {p:#?}", path.display()));
    }
}

/// Feeds text through every entry point that reads configs.
fn feed(text: &str) {
    let _ = model::from_str(text, &[]);
    let _ = model::config::parse_native(text, None);
    let _ = model::aws::parse(text, None);
    let _ = text.parse::<Attachment>();
}

const KEYS: &[&str] = &[
    "security_groups",
    "id",
    "name",
    "description",
    "ingress",
    "egress",
    "protocol",
    "ports",
    "cidr",
    "prefix_list",
    "group",
    "icmp_type",
    "icmp_code",
    "prefix_lists",
    "max_entries",
    "cidrs",
    "interfaces",
    "netns",
    "side",
    "addresses",
    "conntrack",
    "tcp_established",
    "udp_stream",
    "udp",
    "members",
    "quotas",
    "groups",
    "rules_per_group",
    "groups_per_interface",
    "rules_per_interface",
    "import",
];

const VALUES: &[&str] = &[
    "tcp",
    "udp",
    "icmp",
    "icmpv6",
    "all",
    "-1",
    "6",
    "256",
    "0",
    "65535",
    "65536",
    "\"80-90\"",
    "\"90-80\"",
    "all",
    "0.0.0.0/0",
    "\"::/0\"",
    "198.18.0.0/15",
    "198.18.1.7/24",
    "\"2001:db8::/32\"",
    "sg-a",
    "default",
    "host",
    "peer",
    "[]",
    "{}",
    "~",
    "true",
    "1e999",
    "-99999999999999999999999",
    "\"\u{202e}\"",
    "&a x",
    "*a",
    "!!str 5",
    "[198.18.0.1, \"2001:db8::1\"]",
];

/// Line-oriented near-YAML: random indentation, keys and values from the
/// config vocabulary, list dashes, flow collections.
fn yamlish() -> impl Strategy<Value = String> {
    let line = (
        0usize..8,
        prop::bool::ANY,
        prop::sample::select(KEYS),
        prop::sample::select(VALUES),
        0u8..4,
    )
        .prop_map(|(indent, dash, k, v, shape)| {
            let pad = "  ".repeat(indent);
            let d = if dash { "- " } else { "" };
            match shape {
                0 => format!("{pad}{d}{k}: {v}"),
                1 => format!("{pad}{d}{k}:"),
                2 => format!("{pad}{d}{{ {k}: {v}, {k}: [{v}] }}"),
                _ => format!("{pad}{d}{v}"),
            }
        });
    prop::collection::vec(line, 0..30).prop_map(|l| l.join("\n"))
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        prop::sample::select(VALUES).prop_map(|s| serde_json::Value::from(s.trim_matches('"'))),
        "[a-z0-9:/.-]{0,20}".prop_map(serde_json::Value::from),
    ];
    const AWS_KEYS: &[&str] = &[
        "SecurityGroups",
        "GroupId",
        "GroupName",
        "Description",
        "IpPermissions",
        "IpPermissionsEgress",
        "IpProtocol",
        "FromPort",
        "ToPort",
        "IpRanges",
        "CidrIp",
        "Ipv6Ranges",
        "CidrIpv6",
        "PrefixListIds",
        "PrefixListId",
        "UserIdGroupPairs",
        "UserId",
        "Tags",
        "Unknown",
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop::sample::select(AWS_KEYS).prop_map(str::to_owned),
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,400}") {
        feed(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..400)) {
        feed(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn near_yaml_never_panics(s in yamlish()) {
        feed(&s);
        feed(&format!("security_groups:\n{s}"));
    }

    #[test]
    fn aws_shaped_json_never_panics(v in json_value(), groups in prop::collection::vec(json_value(), 0..3)) {
        feed(&serde_json::json!({ "SecurityGroups": groups }).to_string());
        feed(&serde_json::json!({ "SecurityGroups": [v] }).to_string());
    }

    /// Every truncation of a valid config either loads or reports problems.
    #[test]
    fn truncations_never_panic(cut in 0usize..2000) {
        let text = include_str!("../../examples/web-tier.yaml");
        let mut at = cut.min(text.len());
        while !text.is_char_boundary(at) { at -= 1; }
        feed(&text[..at]);
        let json = include_str!("../../examples/aws-describe-security-groups.json");
        let mut at = cut.min(json.len());
        while !json.is_char_boundary(at) { at -= 1; }
        feed(&json[..at]);
    }
}

/// The loader on raw files: arbitrary bytes (not only UTF-8) never panic.
#[test]
fn arbitrary_files_never_panic() {
    let dir = std::env::temp_dir().join(format!("sg-model-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..300), |bytes| {
            let p = dir.join("f.yaml");
            std::fs::write(&p, &bytes).unwrap();
            let _ = model::load(&p);
            Ok(())
        })
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
