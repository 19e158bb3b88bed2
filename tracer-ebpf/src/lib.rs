//! Library target so that the collector can declare a build dependency on this crate; the
//! programs themselves are in the binary target (`main.rs`).
#![no_std]
