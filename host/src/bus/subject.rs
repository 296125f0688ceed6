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

#[cfg(test)]
mod tests {
    use super::*;

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
