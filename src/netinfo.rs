//! netinfo
