//! Table sizes: a prime `m` (so that every skip visits every slot) with enough slots per
//! backend, and the primes to suggest when a size is not.

use super::{MAX_TABLE_SIZE, MIN_SLOTS_PER_BACKEND, MaglevError};

/// Checks that `m` is a usable table size for `backends` backends: a prime, at least
/// [`MIN_SLOTS_PER_BACKEND`] times `backends`, at most [`MAX_TABLE_SIZE`]. The error
/// suggests the next size that would do.
pub fn check_table_size(m: u32, backends: usize) -> Result<(), MaglevError> {
    let needed = u64::try_from(backends)
        .unwrap_or(u64::MAX)
        .saturating_mul(u64::from(MIN_SLOTS_PER_BACKEND));
    if needed > u64::from(MAX_TABLE_SIZE) {
        return Err(MaglevError::TooManyBackends { backends });
    }
    let needed = needed as u32;
    if m > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge { m });
    }
    if !is_prime(m) {
        return Err(MaglevError::NotPrime {
            m,
            suggested: next_prime(m.max(needed)),
        });
    }
    if m < needed {
        return Err(MaglevError::TooSmall {
            m,
            backends,
            suggested: next_prime(needed),
        });
    }
    Ok(())
}

/// The smallest prime `>= n` (for `n` above 4,294,967,291, the largest 32-bit prime,
/// that prime).
pub fn next_prime(n: u32) -> u32 {
    const LARGEST: u32 = 4_294_967_291;
    if n > LARGEST {
        return LARGEST;
    }
    (n..=LARGEST)
        .find(|&c| is_prime(c))
        .expect("LARGEST is prime")
}

/// Whether `n` is prime: Miller–Rabin with the bases 2, 7 and 61, which decide every
/// 32-bit number exactly.
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    for p in [2, 3, 5, 7, 11, 13, 61] {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    let n64 = u64::from(n);
    let mul = |a: u64, b: u64| a * b % n64;
    let pow = |mut b: u64, mut e: u64| {
        let mut r = 1;
        while e > 0 {
            if e & 1 == 1 {
                r = mul(r, b);
            }
            b = mul(b, b);
            e >>= 1;
        }
        r
    };
    let s = (n - 1).trailing_zeros();
    let d = u64::from((n - 1) >> s);
    [2u64, 7, 61].iter().all(|&a| {
        let mut x = pow(a, d);
        if x == 1 || x == n64 - 1 {
            return true;
        }
        (1..s).any(|_| {
            x = mul(x, x);
            x == n64 - 1
        })
    })
}

/// Size rules without the per-backend minimum.
pub(super) fn check_prime_size(m: u32) -> Result<(), MaglevError> {
    if m > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge { m });
    }
    if !is_prime(m) {
        return Err(MaglevError::NotPrime {
            m,
            suggested: next_prime(m),
        });
    }
    Ok(())
}
