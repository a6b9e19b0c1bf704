//! Prometheus metric families whose label count the compiler checks, for the proxy and
//! the operator.
//!
//! `prometheus`' `MetricVec::with_label_values(&[...])` takes a slice and panics when its
//! length differs from the number of label names the family was made with: a mistake
//! the compiler does not see and a test finds only if it runs that very line (often an
//! error path). A [`Family<V, N>`] is made from exactly `N` label names (`[&str; N]`)
//! and [`Family::with`] takes exactly `N` values (`[&str; N]`), so a call with a value
//! too many or too few does not compile:
//!
//! ```compile_fail
//! # use prometheus::{IntCounterVec, Opts};
//! # use switchboard_metrics::Family;
//! let lookups: Family<IntCounterVec, 2> =
//!     Family::new(Opts::new("lookups_total", "Lookups."), ["route", "result"]).unwrap();
//! lookups.with(["default/chat"]).inc(); // expected an array with 2 elements
//! ```
//!
//! Why this design: one generic type covers every family of both binaries and keeps call
//! sites as short as they were (`lookups.with([route, "hit"]).inc()`). A struct per
//! family with named arguments would also catch two values swapped, but means some forty
//! hand-written types; resolving each child once only works for fixed label sets, and
//! most labels here are names from the config (routes, providers, consumers, quotas).
//! The order of the values is still the caller's to get right, as before.
//!
//! Why [`Family::with`] cannot panic: building a child fails only when the number of
//! values differs from the number of label names, or when the options themselves are
//! invalid (a histogram's buckets out of order); no value is ever inspected. The first
//! is ruled out by `N`; [`Family::new`] rules out the second by building (and removing)
//! one child before it returns, so a bad family is an error at start-up instead of a
//! panic on the request that first uses it.

use std::collections::HashMap;

use prometheus::core::{
    Atomic, Collector, Desc, GenericCounterVec, GenericGaugeVec, MetricVec, MetricVecBuilder,
};
use prometheus::proto::MetricFamily;
use prometheus::{HistogramOpts, HistogramVec, Opts};

/// A metric family with exactly `N` labels: a counter, gauge or histogram vector (`V`,
/// e.g. `IntCounterVec`).
#[derive(Debug, Clone)]
pub struct Family<V, const N: usize> {
    vec: V,
}

/// The vectors a [`Family`] can hold, with the options each is made from.
pub trait Build: Sized {
    /// `Opts`, or `HistogramOpts` for histograms.
    type Opts;
    fn build(opts: Self::Opts, names: &[&str]) -> prometheus::Result<Self>;
}

impl<P: Atomic> Build for GenericCounterVec<P> {
    type Opts = Opts;
    fn build(opts: Opts, names: &[&str]) -> prometheus::Result<Self> {
        Self::new(opts, names)
    }
}

impl<P: Atomic> Build for GenericGaugeVec<P> {
    type Opts = Opts;
    fn build(opts: Opts, names: &[&str]) -> prometheus::Result<Self> {
        Self::new(opts, names)
    }
}

impl Build for HistogramVec {
    type Opts = HistogramOpts;
    fn build(opts: HistogramOpts, names: &[&str]) -> prometheus::Result<Self> {
        Self::new(opts, names)
    }
}

// === impl Family ===

impl<T: MetricVecBuilder, const N: usize> Family<MetricVec<T>, N>
where
    MetricVec<T>: Build,
{
    /// A family labelled `names` (any label names already in `opts` are replaced).
    pub fn new(opts: <MetricVec<T> as Build>::Opts, names: [&str; N]) -> prometheus::Result<Self> {
        let vec = MetricVec::<T>::build(opts, &names)?;
        // Proves that children can be built (see the module's doc): what fails here
        // would fail for every label value. Not registered yet, so nobody sees it.
        let probe = [""; N];
        vec.get_metric_with_label_values(&probe)?;
        vec.remove_label_values(&probe)?;
        Ok(Self { vec })
    }

    /// The series with these label values, in the order of the names; created at zero
    /// the first time.
    pub fn with(&self, values: [&str; N]) -> T::M {
        // Cannot panic: `N` values for `N` names, and `new` built a child (module doc).
        self.vec.with_label_values(&values)
    }

    /// Removes every series.
    pub fn reset(&self) {
        self.vec.reset();
    }

    /// Removes every series with a label for which `gone(name, value)` is true: the
    /// series of an object a new config deleted would otherwise be exported, unchanging,
    /// until a restart.
    pub fn prune(&self, gone: impl Fn(&str, &str) -> bool) {
        let families = Collector::collect(&self.vec);
        for metric in families.iter().flat_map(|family| family.get_metric()) {
            let labels = metric.get_label();
            if labels.iter().any(|l| gone(l.name(), l.value())) {
                let labels: HashMap<&str, &str> =
                    labels.iter().map(|l| (l.name(), l.value())).collect();
                // The series was just read, so removing it can only fail if another
                // caller removed it first.
                let _ = self.vec.remove(&labels);
            }
        }
    }
}

/// Registered like the vector it holds.
impl<T: MetricVecBuilder, const N: usize> Collector for Family<MetricVec<T>, N> {
    fn desc(&self) -> Vec<&Desc> {
        self.vec.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        Collector::collect(&self.vec)
    }
}

#[cfg(test)]
mod tests;
