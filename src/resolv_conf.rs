//! resolv_conf
