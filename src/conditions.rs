//! Standard `metav1.Condition` lists, kept the way Kubernetes conventions ask.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Sets condition `type_`, keeping `lastTransitionTime` when its status does
/// not change.
pub fn set(conditions: &mut Vec<Condition>, type_: &str, ok: bool, reason: &str, message: String, generation: Option<i64>, now: Time) {
    let status = if ok { "True" } else { "False" };
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let since = previous.map(|i| &conditions[i]).filter(|c| c.status == status).map_or(now, |c| c.last_transition_time.clone());
    let condition = Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut c = Vec::new();
        set(&mut c, "Valid", true, "Ok", "fine".into(), Some(1), at(10));
        set(&mut c, "Valid", true, "Ok", "still fine".into(), Some(2), at(20));
        assert_eq!((c.len(), c[0].last_transition_time.clone(), c[0].message.as_str()), (1, at(10), "still fine"));
        set(&mut c, "Valid", false, "Bad", "broken".into(), Some(3), at(30));
        assert_eq!((c[0].status.as_str(), c[0].last_transition_time.clone()), ("False", at(30)));
    }
}
