//! The Azure Functions custom-handler protocol (DESIGN.md §7): decoding the host's invocation
//! payloads, normalising and classifying Event Grid events, encoding responses.

pub mod eventgrid;
pub(crate) mod handler;
pub mod invocation;
pub(crate) mod response;

pub use eventgrid::{classify, EventAction, EventGridEvent, EventSchema};
pub use invocation::{
    decode_event_grid, decode_http, decode_service_bus, decode_timer, DecodeError, HttpRequestData,
    Invocation, ServiceBusDelivery, TimerInfo,
};
pub use response::{json_response, InvocationResponse};
