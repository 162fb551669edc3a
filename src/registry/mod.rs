//! The registry: prefix allocation, certificate issuance, signed network
//! configuration, over HTTP and SQLite.
