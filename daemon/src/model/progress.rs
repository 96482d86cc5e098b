//! Load progress: a [`TensorSource`] that passes every tensor through unchanged and reports how
//! much of the checkpoint has been read (by parameters, converted to the checkpoint's bytes) at
//! most once per `every`, so start-up can log its rate and `/ready` can say how far it is.
//!
//! Must not: change what is loaded (blocks included: `linear_weight` goes to the inner source).

use std::time::{Duration, Instant};

use super::ModelError;
use super::weights::TensorSource;
use fused_kernels::cpu::QuantMatrix;

/// How far a load is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadProgress {
    /// Bytes of the checkpoint read so far (estimated from the parameters read).
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub elapsed: Duration,
}

impl LoadProgress {
    pub fn fraction(&self) -> f64 {
        if self.bytes_total == 0 {
            1.0
        } else {
            self.bytes_read as f64 / self.bytes_total as f64
        }
    }

    /// Bytes per second so far.
    pub fn rate(&self) -> f64 {
        self.bytes_read as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

/// Wraps `inner`, whose `total_params` parameters take `bytes_total` bytes in the checkpoint.
pub struct Progress<'a> {
    inner: &'a mut dyn TensorSource,
    total_params: u64,
    bytes_total: u64,
    params_read: u64,
    started: Instant,
    last_report: Instant,
    every: Duration,
    report: &'a mut dyn FnMut(LoadProgress),
}

impl<'a> Progress<'a> {
    pub fn new(
        inner: &'a mut dyn TensorSource,
        total_params: u64,
        bytes_total: u64,
        every: Duration,
        report: &'a mut dyn FnMut(LoadProgress),
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            total_params: total_params.max(1),
            bytes_total,
            params_read: 0,
            started: now,
            last_report: now,
            every,
            report,
        }
    }

    /// Where the load is now.
    pub fn now(&self) -> LoadProgress {
        let read = self.params_read.min(self.total_params);
        LoadProgress {
            bytes_read: (read as u128 * self.bytes_total as u128 / self.total_params as u128)
                as u64,
            bytes_total: self.bytes_total,
            elapsed: self.started.elapsed(),
        }
    }

    fn advance(&mut self, shape: &[usize]) {
        self.params_read += shape.iter().product::<usize>() as u64;
        if self.last_report.elapsed() >= self.every {
            self.last_report = Instant::now();
            let now = self.now();
            (self.report)(now);
        }
    }
}

impl TensorSource for Progress<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let tensor = self.inner.tensor(name, shape)?;
        self.advance(shape);
        Ok(tensor)
    }

    fn linear_weight(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<(Vec<f32>, Option<QuantMatrix>), ModelError> {
        let weight = self.inner.linear_weight(name, shape)?;
        self.advance(shape);
        Ok(weight)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dummy::DummySource;

    #[test]
    fn reports_bytes_read_and_passes_tensors_through() {
        let mut plain = DummySource::new(7);
        let expected = plain.tensor("a", &[4, 8]).unwrap();
        let mut inner = DummySource::new(7);
        let mut reports = Vec::new();
        let mut report = |p: LoadProgress| reports.push(p);
        {
            let mut progress = Progress::new(&mut inner, 64, 256, Duration::ZERO, &mut report);
            assert_eq!(progress.tensor("a", &[4, 8]).unwrap(), expected);
            assert_eq!(progress.now().bytes_read, 128);
            progress.tensor("b", &[32]).unwrap();
            let end = progress.now();
            assert_eq!((end.bytes_read, end.bytes_total), (256, 256));
            assert_eq!(end.fraction(), 1.0);
            assert!(end.rate() > 0.0);
        }
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].bytes_read, 128);
    }
}
