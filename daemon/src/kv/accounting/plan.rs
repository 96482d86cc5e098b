//! What the accounting asks of the mapper: page operations grouped into jobs, in the order the
//! mapper must carry them out.
//!
//! Must not: decide anything; these are the records the accounting hands the mapper.

use crate::kv::backend::PageId;

/// One physical change, in virtual page numbers of the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PageOp {
    /// Map `pages[i]` at virtual page `first + i`. `shared` pages are cached prefix pages,
    /// which may be mapped at several addresses at once; any other page must be mapped nowhere.
    Map {
        first: usize,
        pages: Vec<PageId>,
        shared: bool,
    },
    /// Unmap `count` pages from virtual page `first` (their physical pages go back to the pool).
    Unmap { first: usize, count: usize },
    /// Copy the first `bytes` bytes of pool page `from[i]` to pool page `to[i]` (a sequence's
    /// own page starting with the cached tokens of a page it cannot share).
    Copy {
        from: Vec<PageId>,
        to: Vec<PageId>,
        bytes: usize,
    },
}

/// Levels per run a growth job covers at most once a slot has `runs` runs: about 64 pages, so
/// that the first chunk of a long prompt is ready long before its last page is mapped, but never
/// fewer than 16 levels, so that the per-layer layout does not pay its per-run access call
/// (`cuMemSetAccess`) once per level.
pub(super) fn levels_per_job(runs: usize) -> usize {
    (64 / runs).max(16)
}

/// One mapper job of a plan: its operations, and the levels per run the slot has once it is done.
#[derive(Debug)]
pub(crate) struct PlannedJob {
    pub(crate) ops: Vec<PageOp>,
    pub(crate) levels: usize,
}

/// What one admission or reservation asks of the mapper, as jobs in order: trims that free pages
/// come first, then the slot's growth in steps (earlier levels ready first), then look-ahead.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) jobs: Vec<PlannedJob>,
    /// Levels per run the reserved tokens need (reached by the jobs before the look-ahead).
    pub(crate) need_levels: usize,
    /// Levels per run once the look-ahead is mapped too.
    pub(crate) lookahead_levels: usize,
}

impl Plan {
    /// Every operation in order.
    #[cfg(test)]
    pub(crate) fn ops(&self) -> Vec<&PageOp> {
        self.jobs.iter().flat_map(|job| &job.ops).collect()
    }
}
