//! The SSE splitter and every provider stream decoder, on arbitrary bytes cut at
//! arbitrary points, then every client encoder on what they produced.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proxy::formats::{DecodeStream, SseDecoder, anthropic, gemini, openai};

fuzz_target!(|input: &[u8]| {
    // The first byte chooses the chunk size, the rest is the stream.
    let Some((&size, bytes)) = input.split_first() else {
        return;
    };
    let size = usize::from(size.max(1));
    let decoders: [Box<dyn DecodeStream>; 3] = [
        Box::<openai::StreamDecoder>::default(),
        Box::<anthropic::StreamDecoder>::default(),
        Box::<gemini::StreamDecoder>::default(),
    ];
    for decoder in decoders {
        let mut decoder = SseDecoder::new(decoder);
        let mut events = Vec::new();
        for chunk in bytes.chunks(size) {
            decoder.push(chunk, &mut events);
        }
        decoder.finish(&mut events);
        let mut out = bytes::BytesMut::new();
        let mut to_openai = openai::StreamEncoder::new(true, 0);
        let mut to_anthropic = anthropic::StreamEncoder::default();
        for event in events {
            to_openai.encode(event.clone(), &mut out);
            to_anthropic.encode(event, &mut out);
        }
    }
});
