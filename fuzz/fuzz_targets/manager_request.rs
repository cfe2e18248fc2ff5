//! Feeds arbitrary bytes to a manager server's request decoder and, when they decode,
//! runs the request against a scratch server state (as a client of another build, so no
//! request may run code by offset). Any panic, hang or crash is a bug: a malformed
//! request must be a typed error and leave the server serving.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mproc_manager::fuzz_request(&data[..data.len().min(64 << 10)]);
});
