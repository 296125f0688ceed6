//! Which hosts run a component: computed by every host from the same inputs (the live
//! host set and the component's `[placement]`), so all hosts agree without a
//! scheduler.
//!
//! Rendezvous (highest random weight) hashing: each eligible host gets a score from
//! a hash of (host id, app, component); the `hosts` highest scores run it. When a host
//! joins or leaves, only components whose top scores change move: a host leaving
//! moves only the components it ran, a host joining takes only the components where
//! it now scores in the top `hosts`.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::manifest::PlacementSpec;

/// What placement needs to know about a live host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Stable host id.
    pub id: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// Whether a host with `labels` may run a component placed by `spec`.
pub fn eligible(spec: &PlacementSpec, labels: &BTreeMap<String, String>) -> bool {
    spec.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn score(host: &str, app: &str, component: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(host.as_bytes());
    h.update([0]);
    h.update(app.as_bytes());
    h.update([0]);
    h.update(component.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The ids of the hosts that run `app/component`, best first (empty: no live host is
/// eligible).
pub fn assign<'a>(
    app: &str,
    component: &str,
    spec: &PlacementSpec,
    hosts: impl IntoIterator<Item = &'a Candidate>,
) -> Vec<String> {
    let mut scored: Vec<(u64, &str)> = hosts
        .into_iter()
        .filter(|h| eligible(spec, &h.labels))
        .map(|h| (score(&h.id, app, component), h.id.as_str()))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let n = spec.hosts.map_or(scored.len(), |n| n as usize);
    scored
        .into_iter()
        .take(n)
        .map(|(_, id)| id.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn spec(hosts: Option<u32>, labels: &[(&str, &str)]) -> PlacementSpec {
        PlacementSpec {
            hosts,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn every_host_computes_the_same_assignment_in_any_order() {
        let hosts: Vec<_> = (0..5).map(|i| host(&format!("h{i}"), &[])).collect();
        let mut reversed = hosts.clone();
        reversed.reverse();
        for c in ["orders", "users", "payments"] {
            let s = spec(Some(2), &[]);
            assert_eq!(
                assign("shop", c, &s, &hosts),
                assign("shop", c, &s, &reversed)
            );
            assert_eq!(assign("shop", c, &s, &hosts).len(), 2);
        }
        assert_eq!(assign("shop", "orders", &spec(None, &[]), &hosts).len(), 5);
    }

    #[test]
    fn labels_restrict_and_nobody_eligible_is_empty() {
        let hosts = [
            host("a", &[("zone", "eu-1")]),
            host("b", &[("zone", "us-1")]),
            host("c", &[("zone", "eu-1"), ("gpu", "yes")]),
        ];
        let mut eu = assign("shop", "orders", &spec(None, &[("zone", "eu-1")]), &hosts);
        eu.sort();
        assert_eq!(eu, ["a", "c"]);
        assert_eq!(
            assign("shop", "orders", &spec(Some(5), &[("gpu", "yes")]), &hosts),
            ["c"]
        );
        assert!(assign("shop", "orders", &spec(None, &[("zone", "mars")]), &hosts).is_empty());
    }

    #[test]
    fn a_host_leaving_moves_only_what_it_ran() {
        let hosts: Vec<_> = (0..6).map(|i| host(&format!("h{i}"), &[])).collect();
        let s = spec(Some(1), &[]);
        let components: Vec<String> = (0..200).map(|i| format!("c{i}")).collect();
        let before: Vec<_> = components
            .iter()
            .map(|c| assign("app", c, &s, &hosts)[0].clone())
            .collect();
        let without_h3: Vec<_> = hosts.iter().filter(|h| h.id != "h3").cloned().collect();
        let mut moved = 0;
        for (c, was) in components.iter().zip(&before) {
            let now = assign("app", c, &s, &without_h3)[0].clone();
            if was != "h3" {
                assert_eq!(&now, was, "{c} moved although its host stayed");
            } else {
                moved += 1;
            }
        }
        // Spread: each of 6 hosts runs some of 200 components.
        assert!(moved > 10 && moved < 70, "h3 ran {moved} of 200");
    }
}
