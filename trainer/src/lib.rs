//! The keel trainer (in progress).
