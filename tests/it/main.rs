//! The integration tests, as one test binary (one link, one process; `cargo test` runs it).
//! Each module is one area; the plumbing they share is in `support`. Fixtures are read from
//! `tests/fixtures/` in this repository.

mod support;

mod arm_client;
mod cli;
mod functions_decode;
mod functions_host;
mod html_report;
mod infra;
mod loop_prevention;
mod network_ahead;
mod operator;
mod per_vnet;
mod permissions;
mod plan_file;
mod resilience;
mod rollout_control;
mod rollout_gates;
mod rollout_waves;
mod run_state;
mod scenarios;
mod servicebus;
mod shared_subnets;
mod sim_fidelity;
mod windows;
