//! Integration tests: one binary (ripgrep's layout), a temp dir per test.

mod util;

mod cli;
mod faults;
mod gateways;
mod kafka;
mod report;
mod scan;
mod schema;
