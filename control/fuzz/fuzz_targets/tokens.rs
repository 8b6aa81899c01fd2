//! Join tokens (`K10<hash>::<id>:<secret>`) and static token files
//! (`token,user,uid,"groups"`): parsed; a join token that parses formats
//! back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_api::join::JoinToken;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = JoinToken::parse(text) {
        let again = JoinToken::parse(&t.bearer()).expect("a bearer of a token parses");
        assert_eq!((again.id, again.secret), (t.id.clone(), t.secret.clone()));
    }
    let _ = skiff_apiserver::fuzzing::token_file(text);
});
