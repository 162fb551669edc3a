//! Certificates: the network CA, node certificates, CSRs, verification.
