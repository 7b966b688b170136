//! Integration tests of the encrypting wrapper over the memory store, reading
//! the inner store directly to see what a backend holds.

mod at_rest;
mod common;
mod failures;
mod fields;
mod rotation;
