//! Any bytes fed to the pgoutput decoder: a message or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bemi_worker::pgoutput::decode(data);
});
