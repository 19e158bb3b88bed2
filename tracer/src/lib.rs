//! tracer: follow packets hop by hop through container networking.
//!
//! Data flow, one module per stage: [`kernel`] loads and attaches the programs, [`reader`]
//! drains the ring buffer, [`decode`] turns records into events, [`correlate`] stitches them
//! into packets, flows and NAT records, and [`output`] writes text or JSON. [`btf`] supplies
//! kernel offsets, [`netns`] and [`names`] name namespaces, [`run`] ties a session together.

pub mod btf;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod correlate;
pub mod decode;
pub mod doctor;
pub mod filter;
pub mod follow;
pub mod kernel;
pub mod names;
pub mod netns;
pub mod output;
pub mod privileges;
pub mod reader;
pub mod run;
pub mod select;
pub mod topology;
