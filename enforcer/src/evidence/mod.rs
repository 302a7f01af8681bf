//! Evidence an auditor can trust: the event lines' hash chain and its
//! signed heads ([`chain`], checked by [`verify`]), the keys that sign
//! ([`keys`]), and signed policies ([`policy_sig`]).

pub mod chain;
pub mod commands;
pub mod keys;
pub mod policy_sig;
pub mod verify;
