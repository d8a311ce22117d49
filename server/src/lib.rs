//! The keel server.
