//! A REST request's method, path and query as the API server reads them
//! (routing, and the audit log's RequestInfo). Input: `METHOD PATH?QUERY`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, rest) = text.split_once(' ').unwrap_or(("GET", text));
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    skiff_apiserver::fuzzing::request_path(method, path, query);
});
