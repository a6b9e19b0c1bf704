//! What a proxy knows about each backend (a provider model) from its own traffic:
//! requests in flight, a moving average of latency, and a passive circuit breaker.
//! Kept across config reloads (`Runtime::build` carries it over by backend key).
//!
//! Circuit: `consecutive_failures` failures in a row eject the backend for
//! `ejection * 2^(ejections in a row - 1)` (capped). When that ends the backend is
//! half-open: one request probes it; success closes the circuit, failure ejects it
//! again for longer. A probe that ends without an outcome (cancelled) frees the slot.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use switchboard_api::snapshot::Circuit;

/// Requests a window needs before its error rate counts.
const MIN_WINDOW_REQUESTS: u32 = 10;

/// Weight of the newest sample in the latency average.
const LATENCY_ALPHA: f64 = 0.3;

/// One backend's signals.
#[derive(Debug, Default)]
pub struct BackendHealth {
    in_flight: AtomicU32,
    /// Microseconds; 0 until the first sample.
    latency_us: AtomicU64,
    circuit: Mutex<CircuitState>,
}

#[derive(Debug, Default)]
struct CircuitState {
    failures: u32,
    /// Requests and failures in the current error-rate window, and when it began.
    window: (u32, u32, Option<Instant>),
    /// Ejections in a row (reset by a success).
    ejections: u32,
    ejected_at: Option<Instant>,
    ejected_until: Option<Instant>,
    probing: bool,
}

/// Where a backend's circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitView {
    Closed,
    /// Ejection over; the next request may probe it.
    HalfOpen,
    /// Ejected since the instant given (or being probed by another request).
    Ejected(Instant),
}

/// An attempt on a backend: counts as in flight until dropped; report its outcome with
/// `succeeded` or `failed`.
#[derive(Debug)]
pub struct Attempt {
    health: Arc<BackendHealth>,
    started: Instant,
    probe: bool,
    settled: bool,
}

// === impl BackendHealth ===

impl BackendHealth {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The moving average of latency, once measured.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    pub fn view(&self, now: Instant) -> CircuitView {
        let circuit = self.lock();
        match (circuit.ejected_at, circuit.ejected_until) {
            (Some(at), _) if circuit.probing => CircuitView::Ejected(at),
            (Some(at), Some(until)) if now < until => CircuitView::Ejected(at),
            (Some(_), _) => CircuitView::HalfOpen,
            _ => CircuitView::Closed,
        }
    }

    /// Starts an attempt, unless the circuit forbids it: an ejected backend, or a
    /// half-open one another request is probing. `force` starts it anyway (every
    /// backend is ejected and this one was ejected longest ago).
    pub fn begin(self: &Arc<Self>, force: bool) -> Option<Attempt> {
        self.begin_at(Instant::now(), force)
    }

    fn begin_at(self: &Arc<Self>, now: Instant, force: bool) -> Option<Attempt> {
        let probe = {
            let mut circuit = self.lock();
            let ejected = circuit.ejected_at.is_some();
            let over = circuit.ejected_until.is_none_or(|until| now >= until);
            match (ejected, over, circuit.probing) {
                (false, _, _) => false,
                (true, true, false) => {
                    circuit.probing = true;
                    true
                }
                _ if force => false,
                _ => return None,
            }
        };
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Attempt {
            health: self.clone(),
            started: now,
            probe,
            settled: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.circuit.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Attempt ===

impl Attempt {
    /// The backend answered; `latency` feeds the average (time to headers, or to the
    /// first event of a stream).
    pub fn succeeded(mut self) {
        self.settled = true;
        let sample = self.started.elapsed().as_micros().max(1) as f64;
        let old = self.health.latency_us.load(Ordering::Relaxed) as f64;
        let new = if old == 0.0 {
            sample
        } else {
            LATENCY_ALPHA * sample + (1.0 - LATENCY_ALPHA) * old
        };
        self.health.latency_us.store(new as u64, Ordering::Relaxed);
        let mut circuit = self.health.lock();
        if circuit.ejected_at.is_some() {
            tracing::info!("backend recovered; circuit closed");
        }
        let window = circuit.window;
        *circuit = CircuitState {
            window,
            ..CircuitState::default()
        };
        // The window only needs the count here; its length is the failing side's
        // policy, checked when a failure is recorded.
        circuit.window.0 += 1;
    }

    /// The backend failed in a way that counts against it.
    pub fn failed(self, policy: &Circuit) {
        self.failed_at(Instant::now(), policy);
    }

    fn failed_at(mut self, now: Instant, policy: &Circuit) {
        self.settled = true;
        let mut circuit = self.health.lock();
        circuit.probing = false;
        circuit.failures += 1;
        let window_ended = circuit.window.2.is_none_or(|began| {
            now.duration_since(began) > Duration::from_millis(policy.window_ms)
        });
        if window_ended {
            circuit.window = (0, 0, Some(now));
        }
        circuit.window.0 += 1;
        circuit.window.1 += 1;
        let (requests, failed, _) = circuit.window;
        let rate_trips = policy.error_rate_percent > 0
            && requests >= MIN_WINDOW_REQUESTS
            && failed * 100 >= policy.error_rate_percent * requests;
        let trips = (policy.consecutive_failures > 0 || policy.error_rate_percent > 0)
            && (self.probe
                || (policy.consecutive_failures > 0
                    && circuit.failures >= policy.consecutive_failures)
                || rate_trips);
        if trips {
            circuit.ejections += 1;
            let factor = 1u32 << (circuit.ejections - 1).min(16);
            let length = Duration::from_millis(policy.ejection_ms)
                .saturating_mul(factor)
                .min(Duration::from_millis(policy.max_ejection_ms));
            circuit.ejected_at = Some(now);
            circuit.ejected_until = Some(now + length);
            circuit.failures = 0;
            circuit.window = (0, 0, None);
            tracing::warn!(ejection = ?length, "backend ejected after failing");
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.health.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.probe && !self.settled {
            self.health.lock().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(failures: u32) -> Circuit {
        Circuit {
            consecutive_failures: failures,
            error_rate_percent: 0,
            window_ms: 1_000,
            ejection_ms: 40,
            max_ejection_ms: 100,
        }
    }

    #[test]
    fn a_high_error_rate_ejects_even_without_consecutive_failures() {
        let health = Arc::new(BackendHealth::default());
        let p = Circuit {
            error_rate_percent: 50,
            ..policy(0)
        };
        let t0 = Instant::now();
        // Alternating: never two failures in a row, but half of them fail.
        for i in 0..9 {
            let attempt = health.begin_at(t0, false).unwrap();
            if i % 2 == 0 {
                attempt.failed_at(t0, &p);
            } else {
                attempt.succeeded();
            }
        }
        assert_eq!(
            health.view(t0),
            CircuitView::Closed,
            "fewer than 10 requests"
        );
        health.begin_at(t0, false).unwrap().failed_at(t0, &p);
        assert_eq!(health.view(t0), CircuitView::Ejected(t0), "6 of 10 failed");
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn fail(health: &Arc<BackendHealth>, at: Instant, times: u32, policy: &Circuit) {
        for _ in 0..times {
            health
                .begin_at(at, false)
                .expect("admitted")
                .failed_at(at, policy);
        }
    }

    #[test]
    fn consecutive_failures_eject_and_a_probe_lets_it_back() {
        let health = Arc::new(BackendHealth::default());
        let p = policy(3);
        let t0 = Instant::now();
        fail(&health, t0, 2, &p);
        health.begin_at(t0, false).unwrap().succeeded();
        fail(&health, t0, 2, &p);
        assert_eq!(
            health.view(t0),
            CircuitView::Closed,
            "a success resets the count"
        );
        fail(&health, t0, 1, &p);
        assert_eq!(health.view(ms(t0, 10)), CircuitView::Ejected(t0));
        assert!(
            health.begin_at(ms(t0, 10), false).is_none(),
            "ejected: no traffic"
        );
        assert!(
            health.begin_at(ms(t0, 10), true).is_some(),
            "unless every backend is ejected"
        );

        assert_eq!(health.view(ms(t0, 41)), CircuitView::HalfOpen);
        let probe = health.begin_at(ms(t0, 41), false).expect("one probe");
        assert!(
            health.begin_at(ms(t0, 42), false).is_none(),
            "only one probe at a time"
        );
        probe.succeeded();
        assert_eq!(health.view(ms(t0, 43)), CircuitView::Closed);
        assert!(health.begin_at(ms(t0, 43), false).is_some());
    }

    #[test]
    fn a_failed_probe_ejects_for_longer_and_a_cancelled_one_frees_the_slot() {
        let health = Arc::new(BackendHealth::default());
        let p = policy(1);
        let t0 = Instant::now();
        fail(&health, t0, 1, &p); // ejected for 40 ms
        let probe = health.begin_at(ms(t0, 45), false).unwrap();
        drop(probe); // cancelled
        let probe = health
            .begin_at(ms(t0, 46), false)
            .expect("the slot is free again");
        probe.failed_at(ms(t0, 50), &p); // ejected for 80 ms: until t0 + 130
        assert_eq!(health.view(ms(t0, 120)), CircuitView::Ejected(ms(t0, 50)));
        assert_eq!(health.view(ms(t0, 131)), CircuitView::HalfOpen);
        let probe = health.begin_at(ms(t0, 131), false).unwrap();
        probe.failed_at(ms(t0, 131), &p); // 160 ms, capped at 100
        assert_eq!(health.view(ms(t0, 230)), CircuitView::Ejected(ms(t0, 131)));
        assert_eq!(health.view(ms(t0, 232)), CircuitView::HalfOpen);
    }

    #[test]
    fn in_flight_and_latency_are_tracked() {
        let health = Arc::new(BackendHealth::default());
        assert_eq!(health.latency(), None);
        let a = health.begin(false).unwrap();
        let b = health.begin(false).unwrap();
        assert_eq!(health.in_flight(), 2);
        a.succeeded();
        drop(b);
        assert_eq!(health.in_flight(), 0);
        assert!(health.latency().is_some());
        // Off: never ejects.
        fail(&health, Instant::now(), 50, &policy(0));
        assert_eq!(health.view(Instant::now()), CircuitView::Closed);
    }
}
