//! The mask thread: computes the token masks of the constrained choices of a batch while the
//! engine thread runs its forward pass, so a structured output costs the engine only the part of
//! its mask that outlasts the forward pass. Started on the first constrained batch.
//!
//! Must not: hold a guide across iterations (each one is lent for one mask and comes back with
//! it), or sample (the engine does, with the mask).

use std::sync::mpsc;
use std::thread::JoinHandle;

use super::EngineError;
use crate::guide::{Guide, GuideError, TokenMask};

/// One choice's guide, lent out, and the mask it computed.
pub(super) struct Computed {
    pub id: u64,
    pub guide: Guide,
    pub mask: Result<TokenMask, GuideError>,
}

pub(super) struct MaskThread {
    jobs: Option<mpsc::Sender<Vec<(u64, Guide)>>>,
    done: mpsc::Receiver<Vec<Computed>>,
    thread: Option<JoinHandle<()>>,
}

impl MaskThread {
    pub fn spawn() -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::channel::<Vec<(u64, Guide)>>();
        let (finished, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fused-masks".into())
            .spawn(move || {
                for batch in inbox {
                    let computed = batch
                        .into_iter()
                        .map(|(id, mut guide)| Computed {
                            id,
                            mask: guide.mask(),
                            guide,
                        })
                        .collect();
                    if finished.send(computed).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    /// Starts computing the masks of `guides` (returns at once).
    pub fn start(&self, guides: Vec<(u64, Guide)>) -> Result<(), EngineError> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(guides).ok())
            .ok_or_else(|| EngineError::Internal("the mask thread has stopped".into()))
    }

    /// Waits for the masks of the last [`start`](Self::start).
    pub fn finish(&self) -> Result<Vec<Computed>, EngineError> {
        self.done
            .recv()
            .map_err(|_| EngineError::Internal("the mask thread has stopped".into()))
    }
}

impl Drop for MaskThread {
    fn drop(&mut self) {
        // Closing the job channel ends the thread's loop.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
