//! A caller's deadline (`grpc-timeout`) answered as gRPC says: `DEADLINE_EXCEEDED`.
//!
//! tonic enforces the same header below the services, but answers an expired call with
//! `CANCELLED`, which a client cannot tell from its own cancellation (critest's "should
//! timeout" spec expects DeadlineExceeded). The front layer (`metrics::Calls`) sits inside
//! tonic's and fires a millisecond earlier, so it always answers first. Dropping the call is what stops its
//! work: calls that change the node run in tasks of their own and finish regardless; a
//! pull whose every caller has gone is stopped (`ImageStore::pull`).

use std::{future::Future, time::Duration};

/// How much earlier than the caller's deadline the call is answered: tonic's own timer
/// and ours are both rounded to the timer wheel's millisecond.
const MARGIN: Duration = Duration::from_millis(1);

/// The caller's deadline, if its request names one.
pub fn of<B>(request: &http::Request<B>) -> Option<Duration> {
    request
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_timeout)
}

/// Runs `call` until `deadline` (if any): past it, the call is dropped and the answer is
/// DEADLINE_EXCEEDED.
pub async fn held_to<F: Future>(
    deadline: Option<Duration>,
    call: F,
) -> Result<F::Output, tonic::Status> {
    let Some(deadline) = deadline else {
        return Ok(call.await);
    };
    tokio::time::timeout(deadline.saturating_sub(MARGIN), call)
        .await
        .map_err(|_| {
            tonic::Status::deadline_exceeded(format!(
                "the caller's deadline of {deadline:?} passed"
            ))
        })
}

/// `grpc-timeout`: at most 8 digits and a unit (H, M, S, m, u, n). Anything else is no
/// deadline (tonic's own parse then refuses it).
fn parse_timeout(value: &str) -> Option<Duration> {
    let unit_at = value.len().checked_sub(1)?;
    if !value.is_char_boundary(unit_at) {
        return None;
    }
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_grpc_writes_them() {
        assert_eq!(parse_timeout("1m"), Some(Duration::from_millis(1)));
        assert_eq!(
            parse_timeout("99999999S"),
            Some(Duration::from_secs(99_999_999))
        );
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "123456789S", "1x", "-1S", "1.5S", "é"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
