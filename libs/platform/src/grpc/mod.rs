//! gRPC plumbing shared by every service: the server bootstrap, its layers, and the client
//! side of service-to-service calls.

pub mod auth_layer;
pub mod client;
pub mod deadline_layer;
pub mod health;
mod server;
pub mod trace_layer;

pub use client::{CallCredentials, lazy_channel};
pub use server::{GrpcServer, ServeError};
