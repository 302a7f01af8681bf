//! Empty on the host: this crate is a build-dependency of `enforcer` only so
//! cargo rebuilds the programs when they change. The programs are the binary.
#![no_std]
