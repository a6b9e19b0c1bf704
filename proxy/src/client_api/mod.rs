//! Client-facing APIs: parse requests into the IR, and write responses and errors in
//! the client's own format.

pub mod openai;
