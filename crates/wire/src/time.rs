//! The clock every layer reads for wall time: `created` stamps, ledger rows, rate-limit
//! windows. One function, one integer type (seconds since the Unix epoch).

/// Seconds since the Unix epoch; 0 on a clock set before 1970.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
