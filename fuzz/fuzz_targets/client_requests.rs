//! Client request parsing (OpenAI and Anthropic) and translation of whatever parses to
//! every provider format: a request is a value or a 400, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proxy::formats::{anthropic, gemini, openai};

fuzz_target!(|bytes: &[u8]| {
    for parsed in [openai::parse_request(bytes), anthropic::parse_request(bytes)] {
        let Ok(chat) = parsed else { continue };
        let _ = openai::write_request(&chat, "m", true);
        let _ = anthropic::write_request(&chat, "m", true, 1024);
        let _ = gemini::write_request(&chat);
    }
});
