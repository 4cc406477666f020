//! Text → raw document: detects the format of a config (native YAML or AWS
//! JSON), parses it, and follows `import:` of AWS JSON files. Sits above the
//! two parsers (`config` for native YAML and the raw document types, `aws`
//! for AWS JSON) so that neither imports the other.

use std::{collections::BTreeMap, path::Path};

use super::{
    aws,
    config::{
        Attachment, Doc, Format, Scalar, detect_format, is_stdin, parse_native, read, source_label,
    },
    diag::Problem,
};

/// Parses text of either format into a raw document (no `import:` handling).
///
/// # Errors
/// The parse problem, with file and line.
pub fn parse_text(text: &str, file: Option<&Path>) -> Result<(Doc, Vec<String>), Vec<Problem>> {
    match detect_format(text) {
        Format::AwsJson => aws::parse(text, file).map(|d| (d, vec![])),
        Format::Native => parse_native(text, file).map(|n| (n.doc, n.imports)),
    }
}

/// Reads a config file of either format, follows `import:` (AWS JSON files,
/// relative to the importing file) and adds `attach` as interfaces.
///
/// # Errors
/// Every problem found while reading (unreadable files, syntax errors, a
/// bad import).
pub fn load_doc(path: &Path, attach: &[Attachment]) -> Result<Doc, Vec<Problem>> {
    let text = read(path)?;
    let (mut doc, imports) = parse_text(&text, Some(source_label(path)))?;
    let mut problems = vec![];
    // Imports of a config read from standard input start at the current directory.
    let base = match path.parent() {
        Some(dir) if !is_stdin(path) => dir,
        _ => Path::new("."),
    };
    for imp in imports {
        let ipath = base.join(&imp);
        match read(&ipath) {
            Err(p) => problems.extend(p),
            Ok(t) if detect_format(&t) != Format::AwsJson => problems.push(
                Problem::error(
                    format!("import `{imp}` is not AWS JSON (no top-level \"SecurityGroups\")"),
                    "import only files printed by `aws ec2 describe-security-groups`; put native groups in this file",
                )
                .in_file(Some(source_label(path))),
            ),
            Ok(t) => match aws::parse(&t, Some(&ipath)) {
                Err(p) => problems.extend(p),
                Ok(d) => merge_import(&mut doc, d),
            },
        }
    }
    doc.interfaces.extend(attach.iter().map(Attachment::to_raw));
    if problems.is_empty() {
        Ok(doc)
    } else {
        Err(problems)
    }
}

/// Adds an imported AWS document's groups and prefix lists. Prefix lists the
/// importing file defines win over the importer's placeholders.
fn merge_import(doc: &mut Doc, imported: Doc) {
    doc.groups.extend(imported.groups);
    for pl in imported.prefix_lists {
        let id = pl.id.as_ref().map(Scalar::text);
        let defined = doc
            .prefix_lists
            .iter()
            .any(|p| p.id.as_ref().map(Scalar::text) == id);
        if !(pl.placeholder && defined) {
            doc.prefix_lists.push(pl);
        }
    }
}

/// Groups, prefix lists and members that come from a shared store (many
/// hosts, one policy) rather than from the local file: each group and prefix
/// list as its native JSON entry under the key it was read from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shared {
    /// (store key, JSON of one group).
    pub groups: Vec<(String, String)>,
    /// (store key, JSON of one prefix list).
    pub prefix_lists: Vec<(String, String)>,
    /// Addresses every host published, by group id.
    pub members: BTreeMap<String, Vec<std::net::IpAddr>>,
}

/// A raw id as text (empty when missing: validation reports that).
fn id_text(id: &Option<Scalar>) -> String {
    id.as_ref().map(Scalar::text).unwrap_or_default()
}

/// The ids that are present.
fn id_texts<'a>(ids: impl Iterator<Item = &'a Option<Scalar>>) -> Vec<String> {
    ids.filter_map(|id| id.as_ref().map(Scalar::text)).collect()
}

/// Adds the store's groups and prefix lists to a local document, and the
/// published members of every group that exists. A group or prefix list
/// defined both locally and in the store is an error: which one holds
/// would depend on the order of writes. Problems name the store key.
///
/// # Errors
/// An entry that does not parse, or one the local file defines too.
pub fn merge_shared(doc: &mut Doc, shared: &Shared) -> Result<(), Vec<Problem>> {
    let mut problems = vec![];
    // Each entry parsed as a native document of its own, labelled with its
    // key (which its origin keeps for the messages below).
    let mut store = Doc::default();
    let wrapped = shared
        .groups
        .iter()
        .map(|(key, json)| (key, format!("{{\"security_groups\": [{json}]}}")))
        .chain(shared.prefix_lists.iter().map(|(key, json)| {
            let text = format!("{{\"security_groups\": [], \"prefix_lists\": [{json}]}}");
            (key, text)
        }));
    for (key, text) in wrapped {
        match parse_native(&text, Some(Path::new(key))) {
            Err(p) => problems.extend(p),
            Ok(n) => {
                store.groups.extend(n.doc.groups);
                store.prefix_lists.extend(n.doc.prefix_lists);
            }
        }
    }
    let local_groups = id_texts(doc.groups.iter().map(|g| &g.id));
    let local_lists = id_texts(doc.prefix_lists.iter().map(|p| &p.id));
    let clash = |kind: &str, id: &Option<Scalar>, origin: &super::types::Origin| {
        let key = origin.file.as_deref().unwrap_or(Path::new("")).display();
        let id = id_text(id);
        Problem::error(
            format!("{kind} {id} is defined both here and in the store ({key})"),
            format!(
                "remove it from the local config: with a store, {kind}s come from `sgctl push`"
            ),
        )
        .in_file(doc.file.as_deref())
    };
    for g in store.groups {
        if local_groups.contains(&id_text(&g.id)) {
            problems.push(clash("group", &g.id, &g.origin));
        } else {
            doc.groups.push(g);
        }
    }
    for pl in store.prefix_lists {
        if local_lists.contains(&id_text(&pl.id)) {
            problems.push(clash("prefix list", &pl.id, &pl.origin));
        } else {
            doc.prefix_lists.push(pl);
        }
    }
    // Members of groups nobody defines any more are passed over: a host's
    // published address outlives a group's removal until it republishes.
    let defined = id_texts(doc.groups.iter().map(|g| &g.id));
    for (group, addrs) in &shared.members {
        if defined.contains(group) {
            doc.members
                .entry(group.clone())
                .or_default()
                .extend(addrs.iter().map(|a| Scalar::Str(a.to_string())));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{aws, validate};

    fn local(yaml: &str) -> Doc {
        parse_text(yaml, Some(Path::new("local.yaml"))).unwrap().0
    }

    #[test]
    fn store_groups_round_trip_and_join_the_local_config() {
        let pushed = crate::model::from_str(
            "security_groups:\n  - id: sg-db\n    ingress:\n      - { protocol: tcp, ports: 3306, group: sg-web, description: from web }\n  - { id: sg-web, ingress: [] }\nprefix_lists:\n  - { id: pl-1, cidrs: [198.18.9.0/24] }\n",
            &[],
        )
        .unwrap();
        let shared = Shared {
            groups: pushed
                .groups
                .iter()
                .map(|g| {
                    (
                        format!("/sg/v1/groups/{}", g.id),
                        aws::group_json(g).unwrap(),
                    )
                })
                .collect(),
            prefix_lists: pushed
                .prefix_lists
                .iter()
                .map(|p| {
                    (
                        format!("/sg/v1/prefix-lists/{}", p.id),
                        aws::prefix_list_json(p).unwrap(),
                    )
                })
                .collect(),
            members: BTreeMap::from([
                ("sg-web".to_owned(), vec!["198.18.0.1".parse().unwrap()]),
                ("sg-gone".to_owned(), vec!["198.18.0.9".parse().unwrap()]),
            ]),
        };
        let mut doc = local(
            "security_groups: []\ninterfaces:\n  - { name: eth0, security_groups: [sg-db], addresses: [198.18.0.2] }\n",
        );
        merge_shared(&mut doc, &shared).expect("merges");
        let model = validate::build(&doc, &crate::model::Offline).expect("valid");
        let rules = |m: &crate::model::Model| {
            m.group("sg-db")
                .unwrap()
                .ingress
                .iter()
                .map(|r| (r.id.clone(), r.peer.clone(), r.description.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(rules(&model), rules(&pushed));
        assert_eq!(
            model.group_addresses("sg-web"),
            ["198.18.0.1".parse::<std::net::IpAddr>().unwrap()],
            "published members; those of groups nobody defines are passed over"
        );
        // A group defined both locally and in the store is an error naming the key.
        let mut clash = local("security_groups:\n  - { id: sg-web, ingress: [] }\n");
        let problems = merge_shared(&mut clash, &shared).expect_err("clash");
        assert!(
            problems.iter().any(|p| p.to_string().contains("sg-web")
                && p.to_string().contains("/sg/v1/groups/sg-web")),
            "{problems:#?}"
        );
        // A hand-written bad entry names its key.
        let bad = Shared {
            groups: vec![(
                "/sg/v1/groups/x".into(),
                "{\"id\": \"x\", \"ingress\": 5}".into(),
            )],
            ..Shared::default()
        };
        let problems = merge_shared(&mut local("security_groups: []\n"), &bad).expect_err("bad");
        assert!(
            problems
                .iter()
                .any(|p| p.to_string().contains("/sg/v1/groups/x")),
            "{problems:#?}"
        );
    }
}
