//! `skiff bpf sync -f FILE`: Services and EndpointSlices from a manifest,
//! all-or-nothing.

use skiff_api::{EndpointSlice, Object, Service, manifest};

use crate::Error;
use crate::desired::{Options, desired};
use crate::model::Desired;

/// Reads the manifest's Services and EndpointSlices into the desired state.
/// Any document that cannot be read, and any object the datapath cannot
/// program, fails the whole sync (with every reason), before a map is
/// touched. Other kinds are ignored.
pub fn desired_from_manifest(
    source: &str,
    text: &str,
    options: &Options,
) -> Result<Desired, Error> {
    let mut services: Vec<Service> = Vec::new();
    let mut slices: Vec<EndpointSlice> = Vec::new();
    let mut problems = Vec::new();
    for (i, doc) in manifest::parse(text).into_iter().enumerate() {
        match doc {
            Ok(doc) => match doc.object {
                Object::Service(s) => {
                    let errors = Object::Service(s.clone()).validate();
                    if errors.is_empty() {
                        services.push(s);
                    } else {
                        for e in errors {
                            problems.push(format!("{source}: document {}: Service: {e}", i + 1));
                        }
                    }
                }
                Object::EndpointSlice(s) => slices.push(s),
                _ => {}
            },
            Err(e) => problems.push(format!("{source}: document {}: {e}", i + 1)),
        }
    }
    let (state, errors) = desired(&services, &slices, options);
    problems.extend(errors.into_iter().map(|e| format!("{source}: {e}")));
    if problems.is_empty() {
        Ok(state)
    } else {
        Err(Error::Input(problems.join("\n")))
    }
}
