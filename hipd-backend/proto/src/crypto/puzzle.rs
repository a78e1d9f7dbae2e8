//! The HIP puzzle (RFC 7401 §4.1.2, §6.3, Appendix A).
//!
//! Find #J with `Ltrunc(RHASH(#I ‖ HIT-I ‖ HIT-R ‖ #J), #K) == 0`, i.e. the
//! lowest-order #K bits of the digest are zero. #I and #J are RHASH_len bits;
//! the Initiator's HIT comes first. The search is sans-IO: the caller gives
//! the starting #J (from its RNG) and an iteration budget, and gets back either
//! a solution or the #J to resume from, so the engine can spread the work over
//! several calls and stop when the puzzle lifetime expires. #J is incremented
//! as a big-endian integer (wrapping).

use super::{CryptoBackend, CryptoError, HashAlg, Hit};

/// Result of a bounded puzzle search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PuzzleOutcome {
    /// A valid #J.
    Solved(Vec<u8>),
    /// Budget used up; resume with this #J.
    Incomplete(Vec<u8>),
}

fn check_params(alg: HashAlg, i: &[u8], j: &[u8], k: u8) -> Result<(), CryptoError> {
    let n = alg.output_len();
    if i.len() != n || j.len() != n {
        return Err(CryptoError::Malformed {
            what: "puzzle",
            reason: "#I/#J length differs from RHASH length",
        });
    }
    if usize::from(k) > 8 * n {
        return Err(CryptoError::Malformed {
            what: "puzzle",
            reason: "#K larger than RHASH length",
        });
    }
    Ok(())
}

/// True when the lowest `k` bits of `digest` are zero.
pub fn ltrunc_is_zero(digest: &[u8], k: u8) -> bool {
    let full = usize::from(k / 8);
    let rem = k % 8;
    let n = digest.len();
    if full > n || (full == n && rem > 0) {
        return false;
    }
    if digest[n - full..].iter().any(|&b| b != 0) {
        return false;
    }
    rem == 0 || digest[n - full - 1] & ((1u8 << rem) - 1) == 0
}

fn increment(j: &mut [u8]) {
    for b in j.iter_mut().rev() {
        let (v, carry) = b.overflowing_add(1);
        *b = v;
        if !carry {
            break;
        }
    }
}

fn attempt(
    backend: &dyn CryptoBackend,
    alg: HashAlg,
    i: &[u8],
    hit_i: &Hit,
    hit_r: &Hit,
    j: &[u8],
    k: u8,
) -> Result<bool, CryptoError> {
    let d = backend.digest(alg, &[i, hit_i.as_bytes(), hit_r.as_bytes(), j])?;
    Ok(ltrunc_is_zero(d.as_ref(), k))
}

/// Search for #J starting at `start_j`, trying at most `budget` candidates.
#[allow(clippy::too_many_arguments)]
pub fn solve_puzzle(
    backend: &dyn CryptoBackend,
    rhash: HashAlg,
    i: &[u8],
    hit_i: &Hit,
    hit_r: &Hit,
    k: u8,
    start_j: &[u8],
    budget: u64,
) -> Result<PuzzleOutcome, CryptoError> {
    check_params(rhash, i, start_j, k)?;
    let mut j = start_j.to_vec();
    for _ in 0..budget {
        if attempt(backend, rhash, i, hit_i, hit_r, &j, k)? {
            return Ok(PuzzleOutcome::Solved(j));
        }
        increment(&mut j);
    }
    Ok(PuzzleOutcome::Incomplete(j))
}

/// Verify a solution (Responder side).
pub fn verify_puzzle(
    backend: &dyn CryptoBackend,
    rhash: HashAlg,
    i: &[u8],
    hit_i: &Hit,
    hit_r: &Hit,
    k: u8,
    j: &[u8],
) -> Result<(), CryptoError> {
    check_params(rhash, i, j, k)?;
    if attempt(backend, rhash, i, hit_i, hit_r, j, k)? {
        Ok(())
    } else {
        Err(CryptoError::PuzzleFailed)
    }
}
