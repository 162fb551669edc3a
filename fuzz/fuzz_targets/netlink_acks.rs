//! Netlink acknowledgement parsing (the route pipeline reads these from the
//! kernel): arbitrary datagrams never panic and never yield more
//! acknowledgements than 20-byte messages fit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let n = re6st::kernel::acknowledgements(data).count();
    assert!(n <= data.len() / 20);
});
