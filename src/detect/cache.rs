//! A hint to the CPU, for the live index and the worker loop: bring
//! memory into cache ahead of its use.

/// Asks the CPU to bring the cache lines of the `len` bytes from `p` into
/// cache. A hint only: no memory is read or changed and no address faults,
/// so `p` and the bytes after it need not be valid.
#[inline(always)]
pub fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let skew = p as usize & 63;
        let first = p.wrapping_sub(skew);
        for line in 0..(skew + len).div_ceil(64) {
            // SAFETY: a prefetch never faults, whatever the address
            #[allow(unused_unsafe)]
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(64 * line).cast());
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}
