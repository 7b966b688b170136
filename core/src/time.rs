//! Wall-clock time as stored by every backend, and the [`Clock`] the lifecycle
//! reads so tests can move time without sleeping.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time, in whole milliseconds since the Unix epoch (UTC).
///
/// Stores keep expiry as an integer so SQL `WHERE expires_at <= ?` and Redis
/// `PX` TTLs work on it directly; milliseconds are fine-grained enough for
/// token and flow lifetimes and fit an `i64` for the next 292 million years.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_unix_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// The current system time. Code that must be testable reads a [`Clock`]
    /// instead.
    pub fn now() -> Self {
        SystemTime::now().into()
    }

    /// `self + duration`, saturating at the largest representable time.
    pub fn saturating_add(self, duration: Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_to_millis(duration)))
    }

    /// `self - duration`, saturating at the smallest representable time.
    pub fn saturating_sub(self, duration: Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_to_millis(duration)))
    }

    /// How long after `earlier` this is; zero if it is not later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    /// As a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }
}

fn duration_to_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Self {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp(duration_to_millis(after)),
            Err(before) => Timestamp(-duration_to_millis(before.duration())),
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(time: Timestamp) -> Self {
        time.to_system_time()
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T10:04:05.123Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let secs_of_day = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            secs_of_day / 3600,
            (secs_of_day / 60) % 60,
            secs_of_day % 60
        )
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day); Howard
/// Hinnant's algorithm, valid for the whole `i64` millisecond range we use.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        i64::deserialize(deserializer).map(Timestamp)
    }
}

/// How far ahead a deadline that cannot be represented is put: about 30
/// years, as tokio does for `sleep(Duration::MAX)`. "Never" for every
/// caller, and far from the end of the monotonic clock's range.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The instant `timeout` from now, for `tokio::time::timeout_at` and
/// `sleep_until`.
///
/// `Instant::now() + timeout` panics when the sum does not fit the clock
/// (`Duration::MAX`, `u64::MAX / 2` seconds); a caller may pass any
/// duration, so a timeout that large means "no deadline" here: about 30
/// years ahead. Stores and the lifecycle take every caller-given timeout
/// through this.
///
/// ```
/// use std::time::Duration;
/// use mcp_authkit_core::deadline_after;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let never = deadline_after(Duration::MAX); // no panic
/// assert!(never > deadline_after(Duration::from_secs(3600 * 24 * 365)));
/// # }
/// ```
pub fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(FAR_FUTURE))
        // Unreachable on every supported clock: 30 years always fit.
        .unwrap_or(now)
}

/// Where the lifecycle reads the current time.
///
/// Expiry, refresh skew and flow lifetimes are decided against this clock, so
/// a test can use [`ManualClock`] and jump past an expiry instead of sleeping.
/// Backends enforce their own TTLs on real time (Redis expires keys on the
/// server's clock), so store-level expiry is tested with short real TTLs.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told to; for tests.
///
/// ```
/// use std::time::Duration;
/// use mcp_authkit_core::{Clock, ManualClock, Timestamp};
///
/// let clock = ManualClock::new(Timestamp::from_unix_millis(1_000));
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now().unix_millis(), 3_000);
/// ```
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<Timestamp>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock {
            now: Mutex::new(start),
        }
    }

    /// A clock stopped at the current system time.
    pub fn starting_now() -> Self {
        Self::new(Timestamp::now())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = now.saturating_add(by);
    }

    /// Sets the clock to `to` (which may be in the past).
    pub fn set(&self, to: Timestamp) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_rfc3339_utc() {
        assert_eq!(
            Timestamp::from_unix_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        // 2026-11-22T10:04:05.123Z, computed independently with `date -u -d`.
        assert_eq!(
            Timestamp::from_unix_millis(1_795_341_845_123).to_string(),
            "2026-11-22T10:04:05.123Z"
        );
        assert_eq!(
            Timestamp::from_unix_millis(-1).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
        // A leap day.
        assert_eq!(
            Timestamp::from_unix_millis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn converts_to_and_from_system_time() {
        let ts = Timestamp::from_unix_millis(1_700_000_000_123);
        assert_eq!(Timestamp::from(ts.to_system_time()), ts);
        let before_epoch = Timestamp::from_unix_millis(-5_000);
        assert_eq!(Timestamp::from(before_epoch.to_system_time()), before_epoch);
    }

    #[test]
    fn arithmetic_saturates() {
        let max = Timestamp::from_unix_millis(i64::MAX);
        assert_eq!(max.saturating_add(Duration::from_secs(1)), max);
        let t = Timestamp::from_unix_millis(10);
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_unix_millis(20)),
            Duration::ZERO
        );
        assert_eq!(
            t.saturating_duration_since(Timestamp::from_unix_millis(4)),
            Duration::from_millis(6)
        );
    }
}
