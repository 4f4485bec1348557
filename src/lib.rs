//! The library half of the `qoeflow` package: what the binary's subcommands and the benchmarks share
//! beyond the workspace crates.

pub mod loadgen;
