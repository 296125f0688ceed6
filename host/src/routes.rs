//! A route table: path patterns (matchit syntax) with optional methods, mapped to
//! values; refuses overlapping claims and says which claim is in the way.
//!
//! Used twice: by the HTTP trigger's manifest check (routes inside one app) and by the
//! app registry (the live table across all apps). Also parses a route as written in a
//! manifest ([`parse_route`]). A leaf: it imports nothing from the host.

use http::Method;

/// A route: an optional method and a path pattern (`/users/{id}`, `/files/{*path}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `None` matches any method.
    pub method: Option<Method>,
    /// The path pattern, in `matchit` syntax.
    pub path: String,
}

impl std::fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}", self.path),
            None => write!(f, "{}", self.path),
        }
    }
}

/// Parameters one route may have.
pub const MAX_PARAMS: usize = 16;

/// The `{...}` parameters of a pattern (`{{` is an escaped literal brace).
fn count_params(path: &str) -> usize {
    let bytes = path.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == b'{' {
            if bytes.get(i + 1) == Some(&b'{') {
                i += 2;
                continue;
            }
            n += 1;
        }
        i += 1;
    }
    n
}

/// Parses `"GET /users/{id}"` or `"/files/{*path}"` (any method).
pub fn parse_route(text: &str) -> Result<RouteSpec, String> {
    let text = text.trim();
    let (method, path) = match text.split_once(char::is_whitespace) {
        Some((m, p)) => (Some(m), p.trim()),
        None => (None, text),
    };
    let method = match method {
        None => None,
        Some(m) => {
            if !m.chars().all(|c| c.is_ascii_uppercase()) {
                return Err(format!(
                    "invalid method {m:?}: write it in upper case, e.g. \"GET /path\""
                ));
            }
            Some(Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method {m:?}"))?)
        }
    };
    if !path.starts_with('/') {
        return Err(format!("route path {path:?} must start with '/'"));
    }
    if path.chars().any(char::is_whitespace) {
        return Err(format!("route path {path:?} must not contain spaces"));
    }
    let params = count_params(path);
    if params > MAX_PARAMS {
        // (matchit panics past 26; found by fuzzing.)
        return Err(format!(
            "route path {path:?} has {params} parameters; at most {MAX_PARAMS} are allowed"
        ));
    }
    // Let the router judge the pattern syntax, so what we accept is what it serves.
    let mut probe = matchit::Router::new();
    probe
        .insert(path, ())
        .map_err(|e| format!("invalid route pattern {path:?}: {e}"))?;
    Ok(RouteSpec {
        method,
        path: path.to_string(),
    })
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum RouteMatch<'a, T> {
    /// A route matched.
    Found {
        /// The value stored for the route.
        value: &'a T,
        /// The pattern that matched, e.g. `/users/{id}`.
        pattern: &'a str,
        /// Captured parameters, in pattern order.
        params: Vec<(&'a str, &'a str)>,
    },
    /// The path matched but not for this method.
    MethodNotAllowed(Vec<Method>),
    /// Nothing matched the path.
    NotFound,
}

struct Claim<T> {
    method: Option<Method>,
    owner: String,
    value: T,
}

struct PathEntry<T> {
    pattern: String,
    claims: Vec<Claim<T>>,
}

/// Routes to values of type `T`.
pub struct RouteTable<T> {
    router: matchit::Router<usize>,
    paths: Vec<PathEntry<T>>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable {
            router: matchit::Router::new(),
            paths: Vec::new(),
        }
    }
}

fn show(method: &Option<Method>, path: &str) -> String {
    match method {
        Some(m) => format!("{m} {path}"),
        None => path.to_string(),
    }
}

impl<T> RouteTable<T> {
    /// Claims `method path` for `owner` (a label used in conflict messages).
    pub fn insert(
        &mut self,
        method: Option<Method>,
        path: &str,
        owner: &str,
        value: T,
    ) -> Result<(), String> {
        let route = show(&method, path);
        if let Some(entry) = self.paths.iter_mut().find(|e| e.pattern == path) {
            if let Some(other) = entry.claims.iter().find(|c| match (&c.method, &method) {
                (None, _) | (_, None) => true,
                (Some(a), Some(b)) => a == b,
            }) {
                return Err(format!(
                    "route \"{route}\" overlaps route \"{}\" of {}",
                    show(&other.method, path),
                    other.owner
                ));
            }
            entry.claims.push(Claim {
                method,
                owner: owner.to_string(),
                value,
            });
            return Ok(());
        }
        let idx = self.paths.len();
        self.router.insert(path, idx).map_err(|e| {
            let owner_of = |p: &str| {
                self.paths
                    .iter()
                    .find(|x| x.pattern == p)
                    .and_then(|x| x.claims.first())
                    .map(|c| format!(" of {}", c.owner))
                    .unwrap_or_default()
            };
            match &e {
                matchit::InsertError::Conflict { with } => {
                    format!(
                        "route \"{route}\" conflicts with route \"{with}\"{}",
                        owner_of(with)
                    )
                }
                other => format!("route \"{route}\": {other}"),
            }
        })?;
        self.paths.push(PathEntry {
            pattern: path.to_string(),
            claims: vec![Claim {
                method,
                owner: owner.to_string(),
                value,
            }],
        });
        Ok(())
    }

    /// Finds the route for `method path`. A claim for the exact method wins over a
    /// claim for any method on the same pattern.
    pub fn lookup<'a>(&'a self, method: &Method, path: &'a str) -> RouteMatch<'a, T> {
        let Ok(m) = self.router.at(path) else {
            return RouteMatch::NotFound;
        };
        let entry = &self.paths[*m.value];
        let claim = entry
            .claims
            .iter()
            .find(|c| c.method.as_ref() == Some(method))
            .or_else(|| entry.claims.iter().find(|c| c.method.is_none()));
        match claim {
            Some(c) => RouteMatch::Found {
                value: &c.value,
                pattern: &entry.pattern,
                params: m.params.iter().collect(),
            },
            None => RouteMatch::MethodNotAllowed(
                entry
                    .claims
                    .iter()
                    .filter_map(|c| c.method.clone())
                    .collect(),
            ),
        }
    }

    /// Every route as `(method, pattern, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&Method>, &str, &T)> {
        self.paths.iter().flat_map(|p| {
            p.claims
                .iter()
                .map(move |c| (c.method.as_ref(), p.pattern.as_str(), &c.value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_with_params_and_methods() {
        let mut t = RouteTable::default();
        t.insert(Some(Method::GET), "/hello", "a", 1).unwrap();
        t.insert(Some(Method::GET), "/hello/{name}", "a", 2)
            .unwrap();
        t.insert(None, "/files/{*path}", "a", 3).unwrap();
        t.insert(Some(Method::POST), "/hello", "b", 4).unwrap();
        match t.lookup(&Method::GET, "/hello/bob") {
            RouteMatch::Found {
                value,
                params,
                pattern,
            } => {
                assert_eq!(*value, 2);
                assert_eq!(pattern, "/hello/{name}");
                assert_eq!(params, vec![("name", "bob")]);
            }
            other => panic!("{other:?}"),
        }
        match t.lookup(&Method::DELETE, "/files/a/b.txt") {
            RouteMatch::Found { value, params, .. } => {
                assert_eq!(*value, 3);
                assert_eq!(params, vec![("path", "a/b.txt")]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.lookup(&Method::POST, "/hello"),
            RouteMatch::Found { value: 4, .. }
        ));
        assert!(matches!(
            t.lookup(&Method::PUT, "/hello"),
            RouteMatch::MethodNotAllowed(_)
        ));
        assert!(matches!(
            t.lookup(&Method::GET, "/nope"),
            RouteMatch::NotFound
        ));
    }

    #[test]
    fn too_many_parameters_are_refused_not_a_panic() {
        let many: String = (0..30).map(|i| format!("/{{p{i}}}")).collect();
        let e = parse_route(&many).unwrap_err();
        assert!(e.contains("30 parameters; at most 16"), "{e}");
        let ok: String = (0..16).map(|i| format!("/{{p{i}}}")).collect();
        parse_route(&ok).unwrap();
        assert_eq!(count_params("/a/{{literal}}/{b}"), 1);
        // The input the fuzzer found (fuzz/regressions/routes-too-many-params).
        let found = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/routes-too-many-params"
        ))
        .expect("the regression input");
        for line in String::from_utf8_lossy(&found).lines() {
            let _ = parse_route(line);
        }
    }

    #[test]
    fn routes_parse() {
        assert!(parse_route("get /x").is_err());
        assert!(parse_route("GET x").is_err());
        assert!(parse_route("GET /x/{").is_err());
        assert_eq!(parse_route("/a/{*rest}").unwrap().method, None);
        assert_eq!(parse_route("GET /a").unwrap().to_string(), "GET /a");
    }

    #[test]
    fn conflicts_name_the_owner() {
        let mut t = RouteTable::default();
        t.insert(
            Some(Method::GET),
            "/users/{id}",
            "app a, component users",
            (),
        )
        .unwrap();
        let e = t
            .insert(
                Some(Method::GET),
                "/users/{name}",
                "app b, component people",
                (),
            )
            .unwrap_err();
        assert!(e.contains("app a, component users"), "{e}");
        let e = t
            .insert(None, "/users/{id}", "app c, component x", ())
            .unwrap_err();
        assert!(e.contains("overlaps"), "{e}");
    }
}
