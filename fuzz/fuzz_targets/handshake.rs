//! Handshake messages and their payloads: arbitrary bytes fed to a
//! responder (as Init and as Finish) and to an initiator (as Response)
//! must be refused cleanly, never panic.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use re6st::pki::{self, Ca, Csr, IssueRequest, Network, Verifier};
use re6st::tunnel::handshake::{Credentials, Initiator, Responder};
use re6st::tunnel::wire::{Packet, MAX_HANDSHAKE_LEN};

fn node(ca: &Ca, prefix: &str, serial: u64) -> Credentials {
    let key = pki::generate_key();
    let csr = Csr::generate(&key, &[]).unwrap();
    let now = SystemTime::now();
    let cert = ca
        .issue(&IssueRequest {
            csr: &csr,
            prefix: prefix.parse().unwrap(),
            subject_serial: serial as u32,
            serial,
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(86400),
        })
        .unwrap();
    Credentials::new(&key, cert, ca.cert_der(), Verifier::new(&ca.cert_pem()).unwrap()).unwrap()
}

fn creds() -> &'static (Credentials, Credentials) {
    static C: OnceLock<(Credentials, Credentials)> = OnceLock::new();
    C.get_or_init(|| {
        let network: Network = "2001:db8:42::/48".parse().unwrap();
        let ca = Ca::generate(network, 30).unwrap();
        (node(&ca, "1/16", 2), node(&ca, "2/16", 3))
    })
}

fuzz_target!(|data: &[u8]| {
    let (a, b) = creds();
    let now = Instant::now();
    let wall = SystemTime::now();
    let Ok(p) = Packet::new_checked(data) else { return };
    let mut out = [0u8; MAX_HANDSHAKE_LEN];
    // As an Init to a responder.
    if let Ok((r, _)) = Responder::accept(b, &p, 9, now, &mut out) {
        // And the same bytes as its Finish.
        let _ = r.handle_finish(b, &p, now, wall);
    }
    // As the Response to a real Init.
    if let Ok((i, _)) = Initiator::start(a, 1, None, None, now, &mut out) {
        let _ = i.handle_response(a, &p, now, wall, &mut out);
    }
});
