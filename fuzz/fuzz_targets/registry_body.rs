//! Every parser the registry (and its client) applies to untrusted bytes:
//! the JSON request bodies, the community file, the signed network
//! configuration (parse + signature check), the sealed bootstrap answer
//! (the JSON answer itself, and the input sealed to a fixed key as its
//! plaintext), node authentication headers, locations and certificate CNs.
//! None may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use re6st::registry::allocator::Block;
use re6st::registry::api::{
    parse_request, AddTokenRequest, BootstrapResponse, CertRequest, RenewRequest, RevokeRequest,
    TokenRequest,
};
use re6st::registry::client::open_bootstrap;
use re6st::registry::auth::AuthHeaders;
use re6st::registry::community::{parse_locations, Communities};
use re6st::registry::SignedConfig;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request::<CertRequest>(data);
    let _ = parse_request::<TokenRequest>(data);
    let _ = parse_request::<RenewRequest>(data);
    let _ = parse_request::<RevokeRequest>(data);
    let _ = parse_request::<AddTokenRequest>(data);
    if let Ok(signed) = SignedConfig::parse(data) {
        let ca = re6st::pki::generate_key().verifying_key();
        let _ = signed.verify(&ca);
    }
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    if let Ok(answer) = parse_request::<BootstrapResponse>(data) {
        let _ = open_bootstrap(&answer, &key);
    }
    use base64::Engine as _;
    let sealed = re6st::pki::seal(&key.verifying_key(), data);
    let answer = BootstrapResponse {
        prefix: "1/16".into(),
        sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
    };
    let _ = open_bootstrap(&answer, &key);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let max_len = data.first().map_or(16, |b| b % 129);
    let _ = Communities::parse(text, max_len).map(|c| {
        let _ = c.select(&parse_locations("FR,@EU").unwrap_or_default());
    });
    let _ = parse_locations(text);
    let _ = Block::parse_cn(text);
    let _ = Block::from_bits(text);
    let fields: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once(": ")).collect();
    let _ = AuthHeaders::from_lookup(|n| fields.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
});
