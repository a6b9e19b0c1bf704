//! Provider response parsing and client response writing: any bytes from a provider
//! give an answer or an error, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proxy::formats::{anthropic, gemini, openai};

fuzz_target!(|bytes: &[u8]| {
    for parsed in [
        openai::parse_response(bytes),
        anthropic::parse_response(bytes),
        gemini::parse_response(bytes),
    ] {
        if let Ok(response) = parsed {
            let _ = openai::write_response(&response, 0);
            let _ = anthropic::write_response(&response);
        }
    }
    let _ = anthropic::parse_error(bytes);
    let _ = gemini::parse_error(bytes);
    let _ = openai::parse_error(bytes);
});
