//! One integration test binary: the service in-process over real HTTP, against a real
//! PostgreSQL found by `database`.

mod database;
mod helpers;

mod auth;
mod migrate;
mod resume;
mod sse;
mod ws;
