//! Any text as a manifest (YAML or JSON, many documents): every object it
//! yields validates without panicking and survives a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for doc in skiff_api::manifest::parse(text).into_iter().flatten() {
        let _ = doc.object.validate();
        let json = doc.object.to_json();
        let (back, _) =
            skiff_api::Object::from_json(json.clone()).expect("an object's own JSON reads back");
        assert_eq!(back.to_json(), json, "the JSON round trip keeps the object");
        let _ = skiff_api::Object::decode(doc.object.kind(), &doc.object.encode())
            .expect("an object's own protobuf reads back");
    }
});
