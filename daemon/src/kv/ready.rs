//! Which mapper job makes a slot's first pages usable: a short list of (levels, ticket) marks,
//! meaning "once job `ticket` is done, the first `levels` pages of every run are mapped".
//!
//! Marks are kept in increasing order of both levels and tickets. Must not: talk to the mapper.

/// Ready marks of one slot.
#[derive(Debug, Default, Clone)]
pub(crate) struct ReadyMarks {
    marks: Vec<(usize, u64)>,
}

impl ReadyMarks {
    /// Job `ticket` brings the slot to `levels` pages per run.
    pub(crate) fn push(&mut self, levels: usize, ticket: u64) {
        debug_assert!(
            self.marks
                .last()
                .is_none_or(|&(l, t)| l <= levels && t < ticket)
        );
        self.marks.push((levels, ticket));
    }

    /// The slot was trimmed to `levels` pages per run: its first `levels` stay ready exactly
    /// when they were going to be.
    pub(crate) fn clamp(&mut self, levels: usize) {
        for mark in &mut self.marks {
            mark.0 = mark.0.min(levels);
        }
        self.marks.dedup_by_key(|mark| mark.0);
    }

    /// The job to wait for before the first `levels` pages are usable (0: none).
    /// `None` when no mark covers that many pages.
    pub(crate) fn ticket_for(&self, levels: usize) -> Option<u64> {
        if levels == 0 {
            return Some(0);
        }
        self.marks
            .iter()
            .find(|mark| mark.0 >= levels)
            .map(|mark| mark.1)
    }

    /// Forgets marks of finished jobs except the last one, which still vouches for its levels.
    pub(crate) fn prune(&mut self, done: u64) {
        let finished = self.marks.iter().take_while(|mark| mark.1 <= done).count();
        if finished > 1 {
            self.marks.drain(..finished - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_covering_mark_decides() {
        let mut marks = ReadyMarks::default();
        marks.push(2, 1);
        marks.push(5, 3);
        assert_eq!(marks.ticket_for(0), Some(0));
        assert_eq!(marks.ticket_for(2), Some(1));
        assert_eq!(marks.ticket_for(3), Some(3));
        assert_eq!(marks.ticket_for(6), None);
    }

    #[test]
    fn trimming_keeps_the_earliest_job_of_the_kept_prefix() {
        let mut marks = ReadyMarks::default();
        marks.push(2, 1);
        marks.push(5, 3);
        marks.clamp(3);
        assert_eq!(marks.ticket_for(3), Some(3));
        marks.clamp(1);
        assert_eq!(marks.ticket_for(1), Some(1));
        marks.push(4, 7);
        assert_eq!(marks.ticket_for(2), Some(7));
    }

    #[test]
    fn pruning_keeps_what_finished_jobs_vouch_for() {
        let mut marks = ReadyMarks::default();
        marks.push(1, 1);
        marks.push(2, 2);
        marks.push(3, 4);
        marks.prune(2);
        assert_eq!(marks.ticket_for(1), Some(2));
        assert_eq!(marks.ticket_for(3), Some(4));
    }
}
