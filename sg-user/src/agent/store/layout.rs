//! The shared store's key layout under `/sg/v1/` (etcd v3), and the cache of
//! it an agent keeps. Pure: no client here.
//!
//! ```text
//! /sg/v1/groups/<group-id>                      one group, native JSON      (sgctl push)
//! /sg/v1/prefix-lists/<prefix-list-id>          one prefix list, native JSON (sgctl push)
//! /sg/v1/members/<group-id>/<host-id>/<address> ""   under the host's lease  (sgctl run)
//! /sg/v1/hosts/<host-id>                        heartbeat JSON, host's lease (sgctl run)
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::model::source::Shared;

pub const ROOT: &str = "/sg/v1/";
pub const GROUPS: &str = "/sg/v1/groups/";
pub const PREFIX_LISTS: &str = "/sg/v1/prefix-lists/";
pub const MEMBERS: &str = "/sg/v1/members/";
pub const HOSTS: &str = "/sg/v1/hosts/";

pub fn group_key(id: &str) -> String {
    format!("{GROUPS}{id}")
}

pub fn prefix_list_key(id: &str) -> String {
    format!("{PREFIX_LISTS}{id}")
}

pub fn host_key(host: &str) -> String {
    format!("{HOSTS}{host}")
}

/// One address a host publishes as a member of one group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    pub group: String,
    pub address: IpAddr,
}

pub fn member_key(host: &str, m: &Member) -> String {
    format!("{MEMBERS}{}/{host}/{}", m.group, m.address)
}

/// (group, host, address) of a member key.
pub fn parse_member_key(key: &str) -> Option<(&str, &str, IpAddr)> {
    let rest = key.strip_prefix(MEMBERS)?;
    let mut parts = rest.splitn(3, '/');
    let (group, host, addr) = (parts.next()?, parts.next()?, parts.next()?);
    Some((group, host, addr.parse().ok()?))
}

/// Why a host id cannot be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "host id `{0}`: expected 1–64 letters, digits, `-`, `_` or `.`, not starting with `.` (it is part of store keys)"
)]
pub struct BadHostId(pub String);

/// A host id is one path segment of a key.
///
/// # Errors
/// Empty, too long, starting with `.`, or a character outside `[A-Za-z0-9._-]`.
pub fn check_host_id(id: &str) -> Result<(), BadHostId> {
    if crate::sys::is_plain_name(id, 64) {
        Ok(())
    } else {
        Err(BadHostId(id.to_owned()))
    }
}

/// What an agent knows of the store: every key under [`ROOT`] with its
/// value, as of a revision. Rebuilt from scratch by a full list (so nothing
/// stale survives a compaction), then kept by watch events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cache {
    entries: BTreeMap<String, Vec<u8>>,
}

impl Cache {
    /// A cache holding exactly `entries` (a full list).
    pub fn from_list(entries: impl IntoIterator<Item = (String, Vec<u8>)>) -> Cache {
        Cache {
            entries: entries.into_iter().collect(),
        }
    }

    pub fn put(&mut self, key: String, value: Vec<u8>) {
        self.entries.insert(key, value);
    }

    pub fn delete(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// The keys `host` has published as members.
    pub fn members_of(&self, host: &str) -> BTreeSet<String> {
        self.entries
            .keys()
            .filter(|k| parse_member_key(k).is_some_and(|(_, h, _)| h == host))
            .cloned()
            .collect()
    }

    /// The hosts with a live heartbeat.
    pub fn hosts(&self) -> Vec<String> {
        self.entries
            .keys()
            .filter_map(|k| k.strip_prefix(HOSTS).map(str::to_owned))
            .collect()
    }

    /// The groups, prefix lists and members the model merges.
    pub fn shared(&self) -> Shared {
        let mut shared = Shared::default();
        for (key, value) in &self.entries {
            let text = || String::from_utf8_lossy(value).into_owned();
            if key.starts_with(GROUPS) {
                shared.groups.push((key.clone(), text()));
            } else if key.starts_with(PREFIX_LISTS) {
                shared.prefix_lists.push((key.clone(), text()));
            } else if let Some((group, _, addr)) = parse_member_key(key) {
                let v = shared.members.entry(group.to_owned()).or_default();
                if !v.contains(&addr) {
                    v.push(addr);
                }
            }
        }
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_keys_round_trip_and_host_ids_are_one_segment() {
        let m = Member {
            group: "sg-web".into(),
            address: "2001:db8::1".parse().unwrap(),
        };
        let key = member_key("host-a", &m);
        assert_eq!(key, "/sg/v1/members/sg-web/host-a/2001:db8::1");
        assert_eq!(
            parse_member_key(&key),
            Some(("sg-web", "host-a", m.address))
        );
        assert_eq!(parse_member_key("/sg/v1/members/sg-web/host-a/nope"), None);
        for bad in ["", "a/b", "..", "a b", &"h".repeat(65)] {
            assert!(check_host_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_host_id("node-1.example").is_ok());
    }

    #[test]
    fn the_cache_gives_the_model_groups_lists_and_members() {
        let mut c = Cache::from_list([
            (
                group_key("sg-web"),
                br#"{"id":"sg-web","ingress":[]}"#.to_vec(),
            ),
            ("/sg/v1/members/sg-web/a/198.18.0.1".into(), Vec::new()),
            ("/sg/v1/members/sg-web/b/198.18.0.1".into(), Vec::new()),
            ("/sg/v1/members/sg-web/b/198.18.0.2".into(), Vec::new()),
        ]);
        c.delete("/sg/v1/members/sg-web/b/198.18.0.2");
        let s = c.shared();
        assert_eq!(s.groups.len(), 1);
        assert_eq!(
            s.members["sg-web"],
            ["198.18.0.1".parse::<IpAddr>().unwrap()],
            "one address published by two hosts counts once; deleted keys are gone"
        );
        assert_eq!(c.members_of("b").len(), 1);
    }
}
