//! The HTTP trigger: requests on the public listener to the component's `routes`.
//!
//! Manifest: `routes = ["GET /users/{id}", "/files/{*path}"]` (an optional method and
//! a `matchit` pattern), `[components.NAME.auth]` (who may call them: see
//! [`super::rules`]) and `[components.NAME.rate_limit]`. Routes must not overlap inside an app (checked here, with
//! the line of the route in the way) nor across apps (checked by the app registry at
//! deploy). Served by a `wasi:http/incoming-handler@0.2.x` (WASI 0.2) or
//! `wasi:http/handler@0.3.x` (WASI 0.3) export; the source of its invocations is
//! the gateway.

use std::ops::Range;

use super::Trigger;
use super::rules::ComponentAuthSpec;
use crate::capability;
use crate::limit::RateLimitSpec;
use crate::routes::{RouteSpec, RouteTable, parse_route};
use crate::section::{ManifestError, Source, Table};

/// The trigger.
pub struct HttpTrigger;

/// `routes`, `auth` and `rate_limit`.
#[derive(Debug, Clone, Default)]
pub struct HttpSpec {
    /// The routes, in manifest order.
    pub routes: Vec<RouteSpec>,
    /// `[components.NAME.auth]`: who may call the routes.
    pub auth: ComponentAuthSpec,
    /// `[components.NAME.rate_limit]`.
    pub rate_limit: Option<RateLimitSpec>,
    /// Where each route is written (for errors found across components).
    spans: Vec<Range<usize>>,
}

impl Trigger for HttpTrigger {
    const NAME: &'static str = "http";
    const EXPORTS: &'static [&'static str] =
        &["wasi:http/incoming-handler@0.2", "wasi:http/handler@0.3"];
    const HANDLER: &'static str =
        "HTTP handler (wasi:http/incoming-handler@0.2.x or wasi:http/handler@0.3.x)";
    type Spec = HttpSpec;

    fn spec(component: &mut Table<'_>) -> Result<HttpSpec, ManifestError> {
        let written: Vec<toml::Spanned<String>> = component.take_or_default("routes")?;
        let mut spec = HttpSpec::default();
        for (i, route) in written.iter().enumerate() {
            let parsed = parse_route(route.get_ref())
                .map_err(|why| component.invalid(route.span(), &format!("routes[{i}]"), why))?;
            spec.routes.push(parsed);
            spec.spans.push(route.span());
        }
        let written: Vec<String> = written.into_iter().map(toml::Spanned::into_inner).collect();
        spec.auth = super::rules::read(component, &written)?;
        spec.rate_limit = crate::limit::read_rate_limit(component)?;
        Ok(spec)
    }

    fn wanted(spec: &HttpSpec, _caps: &capability::Specs) -> Option<&'static str> {
        (!spec.routes.is_empty()).then_some("routes are set")
    }

    fn check_app(src: Source<'_>, components: &[(&str, &HttpSpec)]) -> Result<(), ManifestError> {
        let mut table = RouteTable::default();
        for (name, spec) in components {
            for (i, (route, span)) in spec.routes.iter().zip(&spec.spans).enumerate() {
                table
                    .insert(
                        route.method.clone(),
                        &route.path,
                        &format!("component {name}"),
                        (),
                    )
                    .map_err(|why| ManifestError::Invalid {
                        location: src.location(Some(span.clone())),
                        field: format!("components.{name}.routes[{i}]"),
                        message: why,
                    })?;
            }
        }
        Ok(())
    }

    fn describe(spec: &HttpSpec, _caps: &capability::Specs) -> Option<String> {
        let routes: Vec<String> = spec.routes.iter().map(ToString::to_string).collect();
        Some(format!(
            "routes: {}",
            if routes.is_empty() {
                "none".into()
            } else {
                routes.join(", ")
            }
        ))
    }
}
