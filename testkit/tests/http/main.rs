//! The testkit's own tests, over real HTTP on loopback.

mod browser;
mod cimd;
mod discovery;
mod failures;
mod flow;
mod grants;
mod registration;
mod resource;
mod shapes;
mod support;
mod token;
