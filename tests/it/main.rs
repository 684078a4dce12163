//! One integration test binary: the service in-process over real HTTP, against a real
//! PostgreSQL found by `helpers::server()`.

mod helpers;

mod auth;
mod browser;
mod bulk;
mod capture_sets;
mod cli;
mod clients;
mod containers;
mod dashboard;
mod embedded;
mod events_views;
mod faults;
mod floods;
mod hardening_conn;
mod hardening_cursor;
mod hardening_sql;
mod hardening_values;
mod idp_tokens;
mod journal_partitions;
mod migrate;
mod openapi;
mod reliability;
mod ops;
mod poolers;
mod resume;
mod roles;
mod scopes;
mod security;
mod security_sql;
mod sse;
mod standby;
mod tail_settings;
mod traces;
mod wakeups;
mod ws;
