//! tracer: follow packets hop by hop through container networking.
//!
//! Data flow, one module per stage: [`kernel`] loads and attaches the programs, [`reader`]
//! drains the ring buffer, [`decode`] turns records into events, [`correlate`] stitches them
//! into packets, flows and NAT records, and [`output`] writes text, JSON or pcapng ([`metrics`]
//! turns the same records into Prometheus metrics for `tracer monitor`). [`rules`] names the
//! netfilter rule behind a NAT or a drop, carried as the data of [`attribution`]. [`filter`]
//! parses and compiles the tcpdump-style expression, [`btf`] supplies kernel offsets, and
//! [`topology`], [`netns`], [`workload`], [`cgroup`] and [`names`] name namespaces,
//! containers and processes. A [`session`] ties the stages together; [`commands`] and [`cli`]
//! sit on top; [`merge`] joins the traces several nodes wrote into one. Dependencies point
//! one way, from the commands down; ARCHITECTURE.md has the picture.

pub mod attribution;
pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod correlate;
pub mod decode;
pub mod doctor;
pub mod error;
pub mod filter;
pub mod kernel;
pub mod memory;
pub mod merge;
pub mod metrics;
pub mod names;
pub mod netns;
pub mod output;
pub mod privileges;
pub mod probe;
pub mod reader;
pub mod recording;
pub mod report;
pub mod rules;
pub mod session;
pub mod topology;
pub mod workload;
