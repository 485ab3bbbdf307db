//! The one set of rules for operator input, shared by the admin API, the `held` and `breaker`
//! subcommands and the service config: who acts and why, override time to live, release pacing.
//! Pure.

use std::time::Duration;

/// Longest `actor`, in characters.
pub const ACTOR_MAX_CHARS: usize = 128;
/// Longest `reason`, in characters.
pub const REASON_MAX_CHARS: usize = 1024;
/// Shortest and longest breaker override time to live.
pub const TTL_MIN: Duration = Duration::from_secs(1);
pub const TTL_MAX: Duration = Duration::from_secs(7 * 86_400);
/// Fastest release pace, notices per minute (10,000 per second, the most one release's
/// transactions are sized for; the default is 600).
pub const RELEASE_RATE_MAX: u32 = 600_000;

/// `actor`: who acts (recorded in the audit topic and sent as a Kafka header). 1 to 128
/// characters: letters, digits and `._@+-:/ ` (an e-mail, a user name, `svc:oncall-bot`), not
/// only spaces.
pub fn check_actor(actor: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_alphanumeric() || "._@+-:/ ".contains(c);
    if actor.trim().is_empty() {
        return Err("actor is required (who acts)".into());
    }
    if actor.chars().count() > ACTOR_MAX_CHARS || !actor.chars().all(allowed) {
        return Err(format!(
            "actor must be at most {ACTOR_MAX_CHARS} characters of letters, digits, spaces and ._@+-:/"
        ));
    }
    Ok(())
}

/// `reason`: why (recorded in the audit topic). 1 to 1024 printable characters (no control
/// characters, so it stays one line in every log and header), not only spaces.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        return Err("reason is required (why, e.g. the incident ticket)".into());
    }
    if reason.chars().count() > REASON_MAX_CHARS || reason.chars().any(char::is_control) {
        return Err(format!("reason must be at most {REASON_MAX_CHARS} printable characters"));
    }
    Ok(())
}

/// Both of the above.
pub fn check_actor_reason(actor: &str, reason: &str) -> Result<(), String> {
    check_actor(actor)?;
    check_reason(reason)
}

/// A breaker override's time to live, as text (`"30m"`): between 1 s and 7 days.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("ttl: {e}"))?;
    if !(TTL_MIN..=TTL_MAX).contains(&d) {
        return Err("ttl must be between 1s and 7 days".into());
    }
    Ok(d)
}

/// A release pace in notices per minute: 1 to [`RELEASE_RATE_MAX`].
pub fn check_release_rate(rate_per_minute: u32) -> Result<u32, String> {
    if !(1..=RELEASE_RATE_MAX).contains(&rate_per_minute) {
        return Err(format!("rate must be 1 to {RELEASE_RATE_MAX} notices per minute"));
    }
    Ok(rate_per_minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_and_reason_bounds_and_characters() {
        assert!(check_actor_reason("alice@example.com", "INC-42: model fixed").is_ok());
        assert!(check_actor("svc:oncall-bot/eu").is_ok());
        assert!(check_actor("").is_err());
        assert!(check_actor("   ").is_err());
        assert!(check_actor(&"a".repeat(ACTOR_MAX_CHARS)).is_ok());
        assert!(check_actor(&"a".repeat(ACTOR_MAX_CHARS + 1)).is_err());
        assert!(check_actor("alice\nbob").is_err());
        assert!(check_actor("alice;rm").is_err());
        assert!(check_reason(&"é".repeat(REASON_MAX_CHARS)).is_ok());
        assert!(check_reason(&"é".repeat(REASON_MAX_CHARS + 1)).is_err());
        assert!(check_reason("line\u{7}bell").is_err());
        assert!(check_reason(" ").is_err());
    }

    #[test]
    fn ttl_and_rate_bounds() {
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("8days").is_err());
        assert!(parse_ttl("soon").is_err());
        assert_eq!(check_release_rate(600), Ok(600));
        assert!(check_release_rate(0).is_err());
        assert!(check_release_rate(RELEASE_RATE_MAX + 1).is_err());
    }
}
