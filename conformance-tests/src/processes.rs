//! Multi-process stress (filled in below).
