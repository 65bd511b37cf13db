#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ringecho_proto::fuzz_entry::tls_kernel(data);
});
