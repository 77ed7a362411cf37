//! Any text taken as a context payload: a context or an error, never a panic; a non-empty
//! context always encodes back to a comment that decodes to itself (an empty one adds no
//! comment at all).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(context) = bemi_core::parse_payload(text)
        && !context.is_empty()
    {
        let tagged = bemi_core::CommentEncoder::default().tag("UPDATE t SET x = 1", &context);
        let payload = bemi_core::decode_payload(&tagged).expect("the comment decodes");
        assert_eq!(bemi_core::parse_payload(payload).expect("the payload parses"), context);
    }
});
