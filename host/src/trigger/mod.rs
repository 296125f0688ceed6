//! Triggers: what starts an invocation, one module each.
//!
//! A trigger owns its keys of a component's manifest section ([`Trigger::spec`]),
//! the export a component needs to serve it ([`Trigger::EXPORTS`]), whether the
//! manifest asks for it ([`Trigger::wanted`]: then that export is required at deploy)
//! and its label in metrics and logs. Each trigger's source (the gateway for HTTP, the
//! mesh for service calls, the subscriber for messages) runs every invocation through
//! the one envelope in [`crate::envelope`]: admission, wake from zero, counters, the
//! call, the outcome's status, metrics and the trace, written once.
//!
//! The host assembles its triggers from one list, the [`triggers!`] call at the bottom
//! of this file. Adding a trigger is one module here and one line in that list, plus
//! its source (what produces invocations) and, for a new kind of export, the call
//! into it in the runtime (as `runtime/message.rs` does for messages). See
//! docs/adr/0011 for a worked example.

pub mod http;
pub mod job;
pub mod mesh;
pub mod message;
pub mod rules;

use std::fmt::Debug;

use crate::capability;
use crate::section::{ManifestError, Source, Table};
use crate::telemetry::metrics::{MAX_TRIGGERS, TriggerLabel};

/// One kind of trigger.
pub trait Trigger: 'static {
    /// The `trigger` label of its metrics and log lines.
    const NAME: &'static str;
    /// Exports that serve it, as export-name prefixes
    /// (`"wasi:http/incoming-handler@0.2"`); a component needs one of them.
    const EXPORTS: &'static [&'static str];
    /// What those exports are, for messages ("HTTP handler (...)").
    const HANDLER: &'static str;
    /// The message of the log line for a failed invocation.
    const FAILED: &'static str = "invocation failed";
    /// Its tag in `status`'s KIND column when the component serves it (`msg`); empty
    /// for HTTP, whose flavor (`p2`, `p3`) is shown instead.
    const TAG: &'static str = "";

    /// Its part of a component's manifest section, checked.
    type Spec: Debug + Clone + Default + Send + Sync;

    /// Takes its keys from `[components.NAME]` (capabilities have taken theirs).
    fn spec(component: &mut Table<'_>) -> Result<Self::Spec, ManifestError>;

    /// When the manifest asks for this trigger, the keys that do, as the start of a
    /// sentence ("routes are set"): the component must then export a handler for it.
    fn wanted(spec: &Self::Spec, caps: &capability::Specs) -> Option<&'static str>;

    /// Checks across the components of one app (route conflicts).
    fn check_app(
        _src: Source<'_>,
        _components: &[(&str, &Self::Spec)],
    ) -> Result<(), ManifestError> {
        Ok(())
    }

    /// One line about what it serves, for `validate` ("routes: GET /x"), if anything.
    fn describe(_spec: &Self::Spec, _caps: &capability::Specs) -> Option<String> {
        None
    }
}

/// A trigger's label: its name and its slot in each component's metric series.
pub trait Labelled: Trigger {
    /// The label.
    const LABEL: TriggerLabel;
}

/// Whether `exports` has a handler for trigger `T`.
pub fn serves<T: Trigger>(exports: &[String]) -> bool {
    exports
        .iter()
        .any(|e| T::EXPORTS.iter().any(|p| e.starts_with(p)))
}

macro_rules! triggers {
    ($($(#[$doc:meta])* $field:ident: $trigger:ty,)*) => {
        /// Each trigger's part of a component's manifest section.
        #[derive(Debug, Clone, Default)]
        pub struct Specs {
            $($(#[$doc])* pub $field: <$trigger as Trigger>::Spec,)*
        }

        #[allow(non_camel_case_types, dead_code)]
        enum Slots { $($field,)* Count }
        const _: () = assert!((Slots::Count as usize) <= MAX_TRIGGERS, "raise MAX_TRIGGERS");

        $(impl Labelled for $trigger {
            const LABEL: TriggerLabel = TriggerLabel {
                slot: Slots::$field as usize,
                name: <$trigger as Trigger>::NAME,
            };
        })*

        /// The tags of the triggers (other than HTTP) a component with `exports` serves.
        pub fn tags(exports: &[String]) -> Vec<&'static str> {
            let mut out = Vec::new();
            $(if !<$trigger>::TAG.is_empty() && serves::<$trigger>(exports) {
                out.push(<$trigger>::TAG);
            })*
            out
        }

        impl Specs {
            /// Every trigger takes its keys from `[components.NAME]`.
            pub fn read(component: &mut Table<'_>) -> Result<Specs, ManifestError> {
                Ok(Specs { $($field: <$trigger>::spec(component)?,)* })
            }

            /// Every trigger's checks across one app's components.
            pub fn check_app(src: Source<'_>, components: &[(&str, &Specs)]) -> Result<(), ManifestError> {
                $(
                    let parts: Vec<_> = components.iter().map(|(n, s)| (*n, &s.$field)).collect();
                    <$trigger>::check_app(src, &parts)?;
                )*
                Ok(())
            }

            /// What the component serves, one line per trigger that says something.
            pub fn describe(&self, caps: &capability::Specs) -> Vec<String> {
                let mut out = Vec::new();
                $(out.extend(<$trigger>::describe(&self.$field, caps));)*
                out
            }

            /// Refuses a component that exports no handler of any trigger, or none for
            /// a trigger its manifest asks for.
            pub fn check_exports(&self, caps: &capability::Specs, exports: &[String]) -> Result<(), String> {
                let mut any = false;
                $(any |= serves::<$trigger>(exports);)*
                if !any {
                    let mut expected: Vec<String> = Vec::new();
                    $(for e in <$trigger>::EXPORTS {
                        let e = format!("{e}.x");
                        if !expected.contains(&e) {
                            expected.push(e);
                        }
                    })*
                    let last = expected.pop().unwrap_or_default();
                    return Err(format!(
                        "component exports no handler this host can call: expected {} or {last}, found [{}]",
                        expected.join(", "),
                        exports.join(", ")
                    ));
                }
                $(if let Some(keys) = <$trigger>::wanted(&self.$field, caps)
                    && !serves::<$trigger>(exports)
                {
                    return Err(format!(
                        "{keys} but the component exports no {}",
                        <$trigger>::HANDLER
                    ));
                })*
                Ok(())
            }
        }
    };
}

triggers! {
    /// HTTP requests on the public listener: `routes`.
    http: http::HttpTrigger,
    /// Messages on its subscriptions: `[messaging]` delivery keys.
    message: message::MessageTrigger,
    /// Calls from other components by name (no keys: callers list it under `calls`).
    mesh: mesh::MeshTrigger,
    /// Runs of its `wasi:cli/run` export: `[job]`.
    job: job::JobTrigger,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_needs_a_handler_for_what_its_manifest_asks() {
        let mut specs = Specs::default();
        let caps = capability::Specs::default();
        let e = specs
            .check_exports(&caps, &["wasi:cli/environment@0.2.0".into()])
            .unwrap_err();
        assert!(e.contains("exports no handler this host can call"), "{e}");
        assert!(e.contains("wasmcloud:messaging/handler@0.2.x"), "{e}");
        specs
            .http
            .routes
            .push(crate::routes::parse_route("GET /x").unwrap());
        let e = specs
            .check_exports(&caps, &["wasmcloud:messaging/handler@0.2.0".into()])
            .unwrap_err();
        assert!(
            e.starts_with("routes are set but the component exports no HTTP handler"),
            "{e}"
        );
        specs
            .check_exports(&caps, &["wasi:http/incoming-handler@0.2.6".into()])
            .unwrap();
    }

    #[test]
    fn a_command_is_a_job_and_a_job_needs_a_command() {
        let mut specs = Specs::default();
        let caps = capability::Specs::default();
        specs
            .check_exports(&caps, &["wasi:cli/run@0.2.0".into()])
            .unwrap();
        specs.job.enabled = true;
        let e = specs
            .check_exports(&caps, &["wasi:http/incoming-handler@0.2.6".into()])
            .unwrap_err();
        assert!(
            e.starts_with("job is set but the component exports no command (wasi:cli/run"),
            "{e}"
        );
        assert_eq!(tags(&["wasi:cli/run@0.2.3".into()]), ["job"]);
    }

    #[test]
    fn labels_have_distinct_slots() {
        let labels = [
            <http::HttpTrigger as Labelled>::LABEL,
            <message::MessageTrigger as Labelled>::LABEL,
            <mesh::MeshTrigger as Labelled>::LABEL,
            <job::JobTrigger as Labelled>::LABEL,
        ];
        for (i, l) in labels.iter().enumerate() {
            assert_eq!(l.slot, i);
        }
        assert_eq!(labels.map(|l| l.name), ["http", "message", "mesh", "job"]);
    }
}
