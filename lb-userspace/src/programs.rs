//! The compiled XDP programs, embedded in the binary.

/// The balancer object (`xlb_balancer` and its maps).
pub static BALANCER: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-balancer"));
/// The decapsulator object (`xlb_decap`).
pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-decap"));
/// Reference programs (`xlb_pass`, `xlb_tx`, `xlb_macswap`).
pub static REFERENCE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-reference"));
