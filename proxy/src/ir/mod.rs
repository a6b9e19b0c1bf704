//! The gateway's shared vocabulary: the types every step of a request passes to the
//! next, and nothing that acts. Every other module may use these; these use nothing
//! of the crate.
//!
//! - `request`: the client's request as the gateway reads it (`Request`), its API and
//!   operation;
//! - `chat`: the internal chat representation every client API parses into and every
//!   provider adapter translates from (N + M adapters, not N x M);
//! - `usage`: token counts;
//! - `reply`: what a provider (or the cache) answered;
//! - `stream`: streamed answers, and how a stream ended;
//! - `record`: what is known of a request when it ends, for the access line, the
//!   metrics and the request's span;
//! - `tolerant`: how provider answers are read (`null` is the same as absent).

pub mod chat;
pub mod record;
pub mod reply;
pub mod request;
pub mod stream;
pub mod tolerant;
pub mod usage;

pub use self::request::{ClientApi, Operation, Request, TraceHeaders};
pub use self::usage::{PromptTokensDetails, Usage};
