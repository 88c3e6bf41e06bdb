//! End-to-end tests against the local control plane (`e2e/cluster`). Each
//! test reads like a user's story: apply this, patch that, kill this
//! controller, expect that.

mod support;

mod browser;
mod cli;
mod cluster;
mod failover;
mod flow;
mod identity;
mod install;
mod real_node;
mod retention;
mod rules;
mod runs;
mod schedule;
mod ui;
mod webhook;
