//! Label and field selectors as `?labelSelector=` and `?fieldSelector=`
//! bring them: parsed, and matched against a set of labels and fields.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use skiff_api::selector::{FieldSelector, Selector};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "fe"), ("env", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(s) = Selector::parse(text) {
        let _ = s.matches(&labels);
        let _ = s.requirements().len();
    }
    if let Ok(f) = FieldSelector::parse(text) {
        let _ = f.matches_with(|field| match field {
            "metadata.name" => Some("web-1".into()),
            "spec.nodeName" => Some(String::new()),
            _ => None,
        });
        let _ = f.required_value("spec.nodeName");
    }
});
