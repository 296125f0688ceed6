//! NATS subject syntax: dot-separated tokens; `*` matches one token, `>` (last only)
//! matches one or more. Used to check manifests, to match on the local bus and to
//! check a component's publish grants.

/// Checks a subject or pattern. Wildcards are allowed only if `wildcards`.
pub fn check(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("a subject cannot be empty".into());
    }
    if subject.chars().any(|c| c.is_whitespace()) {
        return Err(format!("subject {subject:?} contains whitespace"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(format!("subject {subject:?} has an empty token"));
        }
        let wild = *t == "*" || *t == ">";
        if wild && !wildcards {
            return Err(format!(
                "subject {subject:?}: wildcards are not allowed here"
            ));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err(format!("subject {subject:?}: '>' must be the last token"));
        }
        if !wild && (t.contains('*') || t.contains('>')) {
            return Err(format!(
                "subject {subject:?}: '*' and '>' must be whole tokens"
            ));
        }
    }
    Ok(())
}

/// Whether `subject` (no wildcards) matches `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns.
pub fn overlaps(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => return true,
            (Some(x), Some(y)) if *x != "*" && *y != "*" && x != y => return false,
            (Some(_), Some(_)) => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

/// Subjects a component may never publish or subscribe to: the host's own (the
/// lattice's forwarding and app spaces, dead letters), reply inboxes (forwarded
/// answers and pulled bodies travel there) and the NATS system's (`$JS`, `$KV`, …).
/// A guest still answers a request through the reply subject it was handed.
pub const RESERVED: &[&str] = &[
    "wasmhive.*.rpc.*.*",
    "wasmhive.*.standby.*.*",
    "wasmhive.*.app.>",
    "wasmhive.dlq.*.*",
];

/// Why `pattern` reaches subjects a component may not use, if it does.
pub fn reserved(pattern: &str) -> Option<String> {
    let mut tokens = pattern.split('.');
    let (first, second) = (tokens.next().unwrap_or(""), tokens.next());
    if pattern.starts_with('$') || first == ">" {
        return Some(format!(
            "{pattern:?} reaches the NATS system's subjects ($JS, $KV, ...); name the subjects the component uses"
        ));
    }
    // Inboxes are `_INBOX.<random>[.<token>]`: only a wildcard (or `_INBOX`) reaches them.
    if first == "_INBOX" || (first == "*" && matches!(second, Some("*" | ">"))) {
        return Some(format!(
            "{pattern:?} reaches reply inboxes (_INBOX.>), where the host's forwarded answers travel; a guest answers a request through the reply subject it is handed"
        ));
    }
    RESERVED.iter().find(|r| overlaps(pattern, r)).map(|r| {
        format!("{pattern:?} reaches {r}, which the host keeps for itself (forwarded requests, dead letters)")
    })
}

/// Whether every subject `b` matches is also matched by `a` (both may be patterns).
pub fn covers(a: &str, b: &str) -> bool {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    for (i, at) in a.iter().enumerate() {
        if *at == ">" {
            return b.len() > i;
        }
        let Some(bt) = b.get(i) else {
            return false;
        };
        let ok = match (*at, *bt) {
            ("*", ">") => false,
            ("*", _) => true,
            (x, y) => x == y,
        };
        if !ok {
            return false;
        }
    }
    a.len() == b.len()
}

/// `patterns` without those another one covers (and without duplicates), sorted.
pub fn minimal(patterns: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = patterns.into_iter().collect();
    all.sort();
    all.dedup();
    let keep: Vec<String> = all
        .iter()
        .filter(|p| !all.iter().any(|q| q != *p && covers(q, p)))
        .cloned()
        .collect();
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_subjects_are_out_of_reach() {
        for bad in [
            ">",
            "*.>",
            "wasmhive.>",
            "wasmhive.default.rpc.shop.orders",
            "*.*.rpc.*.*",
            "_INBOX.>",
            "$KV.x.>",
            "*.*",
        ] {
            assert!(reserved(bad).is_some(), "{bad}");
        }
        for ok in [
            "orders.created",
            "orders.>",
            "jobs.*",
            "events.x.y",
            "*.created",
        ] {
            assert!(reserved(ok).is_none(), "{ok}");
        }
    }

    #[test]
    fn coverage() {
        assert!(covers("orders.>", "orders.created"));
        assert!(covers("orders.>", "orders.*.x"));
        assert!(covers("orders.*", "orders.created"));
        assert!(!covers("orders.*", "orders.>"));
        assert!(!covers("orders.created", "orders.*"));
        assert!(covers(">", "a"));
        assert!(!covers("orders.>", "orders"));
        assert_eq!(
            minimal([
                "a.b".into(),
                "a.*".into(),
                "c".into(),
                "a.*".into(),
                "x.>".into(),
                "x.y.z".into()
            ]),
            vec!["a.*".to_string(), "c".into(), "x.>".into()]
        );
    }

    #[test]
    fn wildcards() {
        assert!(matches("orders.created", "orders.created"));
        assert!(!matches("orders.created", "orders.created.x"));
        assert!(matches("orders.*.cancelled", "orders.42.cancelled"));
        assert!(!matches("orders.*.cancelled", "orders.cancelled"));
        assert!(matches("orders.>", "orders.a.b.c"));
        assert!(!matches("orders.>", "orders"));
        assert!(matches(">", "anything.at.all"));
        assert!(matches("*", "one"));
        assert!(!matches("*", "one.two"));
    }

    #[test]
    fn checks() {
        assert!(check("orders.created", false).is_ok());
        assert!(check("orders.*", false).is_err());
        assert!(check("orders.*", true).is_ok());
        assert!(check("orders.>.x", true).is_err());
        assert!(check("orders..x", true).is_err());
        assert!(check("orders.a*", true).is_err());
        assert!(check("has space", true).is_err());
        assert!(check("", true).is_err());
    }
}
