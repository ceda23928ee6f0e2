//! The one parser of every count and size on the command line: each option states its bounds,
//! and a value outside them is refused by clap (one `error:` line naming the option and the
//! bound, exit 2) before anything is read or allocated. A count larger than any real run
//! (9223372036854775808 windows, a vocabulary of 2^40) would otherwise reach an allocation and
//! abort the process.
//!
//! Numeric options also accept negative-looking values (`allow_negative_numbers`), so that
//! "-1" reaches these parsers and gets a message about the value, rather than clap taking it
//! for an unknown flag ("unexpected argument '-1' found").

/// The largest model dimension and vocabulary the checkpoint reader accepts.
pub use prunebench_models::config::{MAX_LAYERS, MAX_SIZE};

/// Calibration windows or synthetic samples: the seeds use 128; 65536 windows of 2048 tokens
/// of LLaMA-7B would already hold petabytes of hidden states.
pub const MAX_WINDOWS: usize = 1 << 16;
/// Evaluation windows (at most; the text decides how many there are).
pub const MAX_EVAL_WINDOWS: usize = 1 << 20;
/// Tokens per window: the reader's limit on a model dimension, far above any context length.
pub const MAX_SEQLEN: usize = MAX_SIZE;
/// Token ids a synthetic model is written with (`token_ids.json`, about 6 bytes an id).
pub const MAX_SYNTHETIC_TOKENS: usize = 1 << 26;
/// Repetitions and optimiser steps.
pub const MAX_REPEATS: usize = 1 << 20;
/// Rotated input sets of `bench` (each is a full copy of a case's inputs on the device).
pub const MAX_INPUT_SETS: usize = 1 << 10;
/// `--max-device-memory`, in MiB: 2^40 MiB (an exbibyte) is far above any device and its byte
/// count still fits in 64 bits.
pub const MAX_DEVICE_MIB: u64 = 1 << 40;

/// Parses a whole number in [min, max]; the message says which bound a value broke.
fn bounded(s: &str, min: u64, max: u64) -> Result<u64, String> {
    let range = || format!("a whole number from {min} to {max}");
    if s.starts_with('-') {
        return Err(format!("must not be negative: expected {}", range()));
    }
    let v: u64 = s
        .parse()
        .map_err(|e: std::num::ParseIntError| match e.kind() {
            std::num::IntErrorKind::PosOverflow => format!("too large: must be at most {max}"),
            _ => format!("expected {}", range()),
        })?;
    if v < min {
        return Err(format!("must be at least {min}"));
    }
    if v > max {
        return Err(format!("too large: must be at most {max}"));
    }
    Ok(v)
}

/// A count or index in [min, max].
pub fn count(
    min: usize,
    max: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s| bounded(s, min as u64, max as u64).map(|v| v as usize)
}

/// A seed: any 64-bit whole number.
pub fn seed(s: &str) -> Result<u64, String> {
    bounded(s, 0, u64::MAX)
}

/// A size in MiB, returned in bytes (checked: it cannot wrap).
pub fn mebibytes(s: &str) -> Result<u64, String> {
    let mib = bounded(s, 1, MAX_DEVICE_MIB)?;
    mib.checked_mul(1 << 20)
        .ok_or_else(|| format!("too large: must be at most {MAX_DEVICE_MIB}"))
}

/// A rate: a finite number above 0.
pub fn positive_number(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        Ok(_) => Err("must be a finite number above 0".into()),
        Err(_) => Err("expected a number above 0".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bound_is_named() {
        let c = count(1, 10);
        assert_eq!(c("7"), Ok(7));
        assert!(c("0").unwrap_err().contains("at least 1"));
        assert!(c("11").unwrap_err().contains("at most 10"));
        assert!(c("-3").unwrap_err().contains("must not be negative"));
        assert!(c("x").unwrap_err().contains("from 1 to 10"));
        assert!(c("9223372036854775808").unwrap_err().contains("at most 10"));
        assert!(c("99999999999999999999999")
            .unwrap_err()
            .contains("at most 10"));
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn mebibytes_cannot_wrap() {
        assert_eq!(mebibytes("1"), Ok(1 << 20));
        assert_eq!(mebibytes(&MAX_DEVICE_MIB.to_string()), Ok(1 << 60));
        // 2^44 MiB is 2^64 bytes: once it wrapped to 0.
        assert!(mebibytes("17592186044416").unwrap_err().contains("at most"));
        assert!(mebibytes("0").unwrap_err().contains("at least 1"));
    }
}
