//! The network side: everything that talks to a relay (or an app's backend).
//!
//! - [`lines`]: NDJSON framing and line decoding (sans-IO).
//! - [`decode`]: `Content-Encoding` (gzip, zstd) decoding, chunk by chunk (sans-IO).
//! - [`prefetch`]: a task that reads and decodes a sync stream ahead of the
//!   store, in bounded batches.
//! - [`tls`]: rustls client configuration (public roots + a private CA) and
//!   readable certificate errors.
//! - [`transport`]: [`transport::Http`], the hyper client for `POST /sync/stream`
//!   and JSON calls, with connect/idle timeouts and TCP keepalive.
//! - [`connector`]: the app hook ([`connector::Connector`]) and the relay calls
//!   built on the transport: `/crud` uploads, write checkpoints, `GET /schema`.

pub mod connector;
pub mod decode;
pub mod lines;
pub mod prefetch;
pub mod tls;
pub mod transport;
