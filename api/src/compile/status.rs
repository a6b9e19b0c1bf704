//! Collects what is wrong with one object while it compiles, then turns that into its
//! `Accepted` and `ResolvedRefs` conditions.

use crate::v1alpha1::condition::{reasons, types};
use crate::v1alpha1::{Condition, ConditionStatus, ObjectStatus};

/// A reason and a message for a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Problem {
    pub reason: &'static str,
    pub message: String,
}

/// The problems found in one object.
#[derive(Debug, Default)]
pub(super) struct Verdict {
    generation: Option<i64>,
    /// Problems that keep the object out of the Snapshot (`Accepted=False`).
    rejected: Vec<Problem>,
    /// References that did not resolve (`ResolvedRefs=False`).
    unresolved: Vec<Problem>,
}

// === impl Problem ===

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

// === impl Verdict ===

impl Verdict {
    pub fn new(generation: Option<i64>) -> Self {
        Self {
            generation,
            ..Self::default()
        }
    }

    pub fn reject(&mut self, problem: Problem) {
        self.rejected.push(problem);
    }

    pub fn unresolved(&mut self, problem: Problem) {
        self.unresolved.push(problem);
    }

    /// True while nothing keeps the object out of the Snapshot.
    pub fn is_accepted(&self) -> bool {
        self.rejected.is_empty()
    }

    pub fn into_status(self) -> ObjectStatus {
        let accepted = condition(
            types::ACCEPTED,
            &self.rejected,
            reasons::ACCEPTED,
            self.generation,
        );
        let resolved = condition(
            types::RESOLVED_REFS,
            &self.unresolved,
            reasons::RESOLVED_REFS,
            self.generation,
        );
        ObjectStatus {
            observed_generation: self.generation,
            conditions: vec![accepted, resolved],
        }
    }
}

/// `True` with `ok_reason` when there are no problems; otherwise `False` with the first
/// problem's reason and every problem's message.
fn condition(
    type_: &str,
    problems: &[Problem],
    ok_reason: &str,
    generation: Option<i64>,
) -> Condition {
    match problems.first() {
        None => Condition::new(type_, ConditionStatus::True, ok_reason, "", generation),
        Some(first) => {
            let message = problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            Condition::new(
                type_,
                ConditionStatus::False,
                first.reason,
                message,
                generation,
            )
        }
    }
}
