//! One Kubernetes Event per condition transition (a condition whose status or reason changed),
//! on the FusedModel: `Warning` for reasons that need someone to act (and containers that cannot
//! run), `Normal` otherwise.
//! It decides which events to send; `kube`'s `Recorder` sends them.

use fused_crds::FusedModelStatus;
use kube::runtime::events::{Event, EventType};

use crate::conditions::WARNING_REASONS;
use crate::observe::STALLED_REASONS;

/// Action of events not about one condition.
pub const ACTION: &str = "Reconcile";

/// The events for the transitions from `old` to `new`.
pub fn transitions(old: Option<&FusedModelStatus>, new: &FusedModelStatus) -> Vec<Event> {
    new.conditions
        .iter()
        .filter(|condition| {
            old.and_then(|o| o.condition(&condition.type_))
                .is_none_or(|before| {
                    before.status != condition.status || before.reason != condition.reason
                })
        })
        .map(|condition| Event {
            type_: if WARNING_REASONS.contains(&condition.reason.as_str())
                || STALLED_REASONS.contains(&condition.reason.as_str())
                || (condition.type_ == fused_crds::condition_type::ARTIFACTS_READY
                    && condition.status == "False"
                    && condition.reason != fused_crds::condition_reason::DOWNLOADING)
            {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: condition.reason.clone(),
            note: Some(truncate(
                format!(
                    "{} is {}: {}",
                    condition.type_, condition.status, condition.message
                ),
                1024,
            )),
            // One action per condition type, so that two conditions moving to the same reason
            // (Ready and Scheduled to ScaledToZero) stay two events.
            action: format!("Set{}", condition.type_),
            secondary: None,
        })
        .collect()
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use fused_crds::{condition, condition_reason, condition_type};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(conditions: &[(&str, bool, &str)]) -> FusedModelStatus {
        let mut status = FusedModelStatus::default();
        for (type_, state, reason) in conditions {
            status.set_condition(
                condition(type_, *state, reason, "m", Some(1)),
                Time(Default::default()),
            );
        }
        status
    }

    #[test]
    fn only_changed_conditions_make_events() {
        let old = status(&[
            (condition_type::READY, false, condition_reason::ROLLING_OUT),
            (condition_type::SCHEDULED, true, "AllReplicasScheduled"),
        ]);
        let new = status(&[
            (
                condition_type::READY,
                false,
                condition_reason::INSUFFICIENT_GPU,
            ),
            (condition_type::SCHEDULED, true, "AllReplicasScheduled"),
            (condition_type::DEGRADED, false, "AsExpected"),
        ]);
        let events = transitions(Some(&old), &new);
        let summary: Vec<(EventType, &str)> = events
            .iter()
            .map(|e| (e.type_, e.reason.as_str()))
            .collect();
        assert_eq!(
            summary,
            [
                (EventType::Warning, condition_reason::INSUFFICIENT_GPU),
                (EventType::Normal, "AsExpected")
            ]
        );
        assert!(transitions(Some(&new), &new).is_empty());
        assert_eq!(transitions(None, &new).len(), 3);
    }
}
