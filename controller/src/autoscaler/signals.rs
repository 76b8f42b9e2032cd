//! The signals a controller measures itself (per-replica CPU and memory, a
//! queue's backlog) and the replica counts they ask for, by the formulas
//! HPA users know (autoscaling/v2, `replica_calculator.go`):
//!
//! - utilization: desired = ceil(ready × average / target), left alone
//!   within `tolerance`; replicas without a sample count as using 100% of
//!   the target when scaling down and 0% when scaling up, and replicas not
//!   ready yet count as 0% when scaling up; a correction that flips the
//!   direction leaves the count alone;
//! - queue (HPA's external `AverageValue`): desired = ceil(backlog /
//!   target), left alone within `tolerance` of the current count;
//! - a signal with no sample at all is *missing*: it asks for nothing more,
//!   and forbids any scale-down.

/// What one ready replica uses, as a share of what it is sized for
/// (`resources`): 0.5 is half of its cores or memory. `None`: no sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReplicaUsage {
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
}

/// What the controller measured, next to what the proxies reported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measured {
    /// One entry per *ready* replica; the others counted as current are
    /// not ready yet.
    pub ready: Vec<ReplicaUsage>,
    /// Messages the queue consumer has not finished; `None` when unknown.
    pub backlog: Option<u64>,
}

/// What one signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// This many replicas.
    Replicas(u32),
    /// No sample: no scale-up from it, and no scale-down at all.
    Missing,
}

impl Need {
    /// The most this signal asks for (0 when missing).
    pub fn up(self) -> u32 {
        match self {
            Need::Replicas(n) => n,
            Need::Missing => 0,
        }
    }

    /// The fewest replicas this signal lets the count go down to.
    pub fn floor(self, current: u32) -> u32 {
        match self {
            Need::Replicas(n) => n,
            Need::Missing => current,
        }
    }
}

/// Replicas for a utilization target (`target` as a share, 0.5 = 50%).
pub fn utilization(current: u32, samples: &[Option<f64>], target: f64, tolerance: f64) -> Need {
    let used: Vec<f64> = samples.iter().flatten().copied().collect();
    if used.is_empty() || target <= 0.0 {
        return Need::Missing;
    }
    let missing = samples.len() - used.len();
    let unready = (current as usize).saturating_sub(samples.len());
    let sum: f64 = used.iter().sum();
    let ratio = sum / (target * used.len() as f64);
    let up_with_unready = unready > 0 && ratio > 1.0;
    if !up_with_unready && missing == 0 {
        if (ratio - 1.0).abs() <= tolerance {
            return Need::Replicas(current);
        }
        return Need::Replicas(ceil(ratio * used.len() as f64));
    }
    // Fill the gaps the way that argues against the move.
    let mut total = sum;
    if missing > 0 && ratio < 1.0 {
        total += target * missing as f64;
    }
    let mut count = used.len() + missing;
    if up_with_unready {
        count += unready;
    }
    let corrected = total / (target * count as f64);
    let flipped = (ratio < 1.0 && corrected > 1.0) || (ratio > 1.0 && corrected < 1.0);
    if (corrected - 1.0).abs() <= tolerance || flipped {
        return Need::Replicas(current);
    }
    let desired = ceil(corrected * count as f64);
    if (corrected < 1.0 && desired > current) || (corrected > 1.0 && desired < current) {
        return Need::Replicas(current);
    }
    Need::Replicas(desired)
}

/// Replicas for a backlog at `target` messages per replica.
pub fn queue(current: u32, backlog: Option<u64>, target: f64, tolerance: f64) -> Need {
    let Some(backlog) = backlog else {
        return Need::Missing;
    };
    if target <= 0.0 {
        return Need::Missing;
    }
    let backlog = backlog as f64;
    if current > 0 && (backlog / (target * f64::from(current)) - 1.0).abs() <= tolerance {
        return Need::Replicas(current);
    }
    Need::Replicas(ceil(backlog / target))
}

/// Rounds up, forgiving the last bits of float error (3 × 0.5 / 0.5 is 3).
fn ceil(value: f64) -> u32 {
    (value - 1e-9).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilization_follows_hpa_formula_outside_the_tolerance() {
        // 2 replicas at 90% of a 50% target: ceil(2 × 0.9 / 0.5) = 4.
        assert_eq!(
            utilization(2, &[Some(0.9), Some(0.9)], 0.5, 0.1),
            Need::Replicas(4)
        );
        // 54% of 50% is within 10%: unchanged.
        assert_eq!(
            utilization(3, &[Some(0.54); 3], 0.5, 0.1),
            Need::Replicas(3)
        );
        // Low use scales down: 4 × 0.1 / 0.5 = 0.8 → 1.
        assert_eq!(utilization(4, &[Some(0.1); 4], 0.5, 0.1), Need::Replicas(1));
    }

    #[test]
    fn no_sample_at_all_is_missing_and_blocks_scale_down() {
        let need = utilization(3, &[None, None], 0.5, 0.1);
        assert_eq!(need, Need::Missing);
        assert_eq!(need.floor(3), 3);
        assert_eq!(need.up(), 0);
        assert_eq!(queue(2, None, 10.0, 0.1).floor(2), 2);
    }

    #[test]
    fn a_replica_without_a_sample_counts_against_the_move() {
        // Scaling down: the missing one is assumed at 100% of target:
        // (0.1 + 0.1 + 0.5) / (0.5 × 3) = 0.47 → ceil(1.4) = 2.
        assert_eq!(
            utilization(3, &[Some(0.1), Some(0.1), None], 0.5, 0.1),
            Need::Replicas(2)
        );
        // Scaling up: the missing one is assumed idle:
        // (1.0 + 1.0 + 0) / (0.5 × 3) = 1.33 → 4.
        assert_eq!(
            utilization(3, &[Some(1.0), Some(1.0), None], 0.5, 0.1),
            Need::Replicas(4)
        );
    }

    #[test]
    fn starting_replicas_count_as_idle_when_scaling_up() {
        // 2 ready at 100% of a 50% target, 2 more starting: 2.0 / (0.5 × 4)
        // = 1.0, so the starting ones already cover it.
        assert_eq!(
            utilization(4, &[Some(1.0), Some(1.0)], 0.5, 0.1),
            Need::Replicas(4)
        );
        // Without the starting ones it would ask for 4 as well, from 2.
        assert_eq!(
            utilization(2, &[Some(1.0), Some(1.0)], 0.5, 0.1),
            Need::Replicas(4)
        );
        // 3 ready at 90%, 1 starting: 2.7 / (0.5 × 4) = 1.35 → 6.
        assert_eq!(utilization(4, &[Some(0.9); 3], 0.5, 0.1), Need::Replicas(6));
    }

    #[test]
    fn a_correction_that_flips_the_direction_keeps_the_count() {
        // Ratio 0.8 says down; assuming the missing two at 100% says up.
        assert_eq!(
            utilization(3, &[Some(0.4), None, None], 0.5, 0.1),
            Need::Replicas(3)
        );
    }

    #[test]
    fn queue_backlog_per_replica() {
        assert_eq!(queue(0, Some(1000), 100.0, 0.1), Need::Replicas(10));
        assert_eq!(queue(0, Some(0), 100.0, 0.1), Need::Replicas(0));
        // 950 for 10 replicas is within 10% of 100 each.
        assert_eq!(queue(10, Some(950), 100.0, 0.1), Need::Replicas(10));
        assert_eq!(queue(10, Some(250), 100.0, 0.1), Need::Replicas(3));
    }
}
