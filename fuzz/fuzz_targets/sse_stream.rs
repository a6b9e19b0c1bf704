//! The SSE splitter and every provider stream decoder, on arbitrary bytes cut at
//! arbitrary points, then every client encoder on what they produced.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proxy::formats::{StreamDecoder, anthropic, gemini, openai};
use switchboard_proxy::sse::{self, EventSplitter};

fuzz_target!(|input: &[u8]| {
    // The first byte chooses the chunk size, the rest is the stream.
    let Some((&size, bytes)) = input.split_first() else {
        return;
    };
    let size = usize::from(size.max(1));
    let decoders: [Box<dyn StreamDecoder>; 3] = [
        Box::<openai::ChunkDecoder>::default(),
        Box::<anthropic::EventDecoder>::default(),
        Box::<gemini::ResponseDecoder>::default(),
    ];
    for mut decoder in decoders {
        let mut splitter = EventSplitter::default();
        let mut events = Vec::new();
        for chunk in bytes.chunks(size) {
            for event in splitter.push(chunk) {
                if let Some(data) = sse::data(&event) {
                    decoder.decode(&data, &mut events);
                }
            }
        }
        decoder.end(&mut events);
        let mut out = bytes::BytesMut::new();
        let mut to_openai = openai::ChunkEncoder::new(true, 0);
        let mut to_anthropic = anthropic::EventEncoder::default();
        for event in events {
            to_openai.encode(event.clone(), &mut out);
            to_anthropic.encode(event, &mut out);
        }
    }
});
