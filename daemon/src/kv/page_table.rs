//! The mapper's record of what is physically mapped where, checked before every backend call:
//! a virtual page is never mapped twice, a pool page sits at two addresses only when it is
//! mapped as a shared (cached prefix) page, and only mapped pages are unmapped. A violation is a
//! typed error, never a silent overwrite.
//!
//! Must not: call a backend or decide placement.

use super::KvError;
use super::backend::PageId;

const UNMAPPED: u32 = u32::MAX;

/// Virtual page → pool page, and how many virtual pages each pool page is mapped at.
#[derive(Debug)]
pub(crate) struct PageTable {
    virtual_to_pool: Vec<PageId>,
    pool_mappings: Vec<u32>,
    mapped: usize,
}

fn violation(message: String) -> KvError {
    KvError::Invariant(message)
}

impl PageTable {
    pub(crate) fn new(virtual_pages: usize, pool_pages: usize) -> Self {
        Self {
            virtual_to_pool: vec![UNMAPPED; virtual_pages],
            pool_mappings: vec![0; pool_pages],
            mapped: 0,
        }
    }

    /// Pages mapped now.
    pub(crate) fn mapped(&self) -> usize {
        self.mapped
    }

    /// The pool page at virtual page `page`, if mapped.
    pub(crate) fn pool_page_at(&self, page: usize) -> Option<PageId> {
        self.virtual_to_pool
            .get(page)
            .copied()
            .filter(|&pool| pool != UNMAPPED)
    }

    /// Virtual pages pool page `pool` is mapped at.
    #[cfg(test)]
    pub(crate) fn mappings(&self, pool: PageId) -> usize {
        self.pool_mappings
            .get(pool as usize)
            .map_or(0, |&n| n as usize)
    }

    /// Checks that `pages[i]` may be mapped at virtual page `first + i`: a page that is not
    /// `shared` must be mapped nowhere else.
    pub(crate) fn check_map(
        &self,
        first: usize,
        pages: &[PageId],
        shared: bool,
    ) -> Result<(), KvError> {
        let end = first
            .checked_add(pages.len())
            .filter(|&end| end <= self.virtual_to_pool.len());
        if end.is_none() {
            return Err(violation(format!(
                "map of {} pages at virtual page {first} is outside the region",
                pages.len()
            )));
        }
        for (offset, &pool) in pages.iter().enumerate() {
            let at = first + offset;
            if let Some(already) = self.pool_page_at(at) {
                return Err(violation(format!(
                    "virtual page {at} already holds pool page {already}"
                )));
            }
            match self.pool_mappings.get(pool as usize) {
                None => return Err(violation(format!("pool page {pool} does not exist"))),
                Some(&count) if count > 0 && !shared => {
                    return Err(violation(format!(
                        "pool page {pool} is already mapped at {count} virtual page(s) and is \
                         not a shared page"
                    )));
                }
                Some(_) => {}
            }
            if pages[..offset].contains(&pool) {
                return Err(violation(format!(
                    "pool page {pool} given twice in one mapping"
                )));
            }
        }
        Ok(())
    }

    /// Records a mapping that [`check_map`](Self::check_map) accepted and the backend made.
    pub(crate) fn record_map(&mut self, first: usize, pages: &[PageId]) {
        for (offset, &pool) in pages.iter().enumerate() {
            self.virtual_to_pool[first + offset] = pool;
            self.pool_mappings[pool as usize] += 1;
        }
        self.mapped += pages.len();
    }

    /// Checks that `count` pages from virtual page `first` are all mapped.
    pub(crate) fn check_unmap(&self, first: usize, count: usize) -> Result<(), KvError> {
        match (first..first.saturating_add(count)).find(|&page| self.pool_page_at(page).is_none()) {
            Some(page) => Err(violation(format!(
                "unmap of virtual page {page}, which is not mapped"
            ))),
            None => Ok(()),
        }
    }

    /// Records an unmapping that [`check_unmap`](Self::check_unmap) accepted and the backend made.
    pub(crate) fn record_unmap(&mut self, first: usize, count: usize) {
        for page in first..first + count {
            let pool = std::mem::replace(&mut self.virtual_to_pool[page], UNMAPPED);
            self.pool_mappings[pool as usize] -= 1;
        }
        self.mapped -= count;
    }

    /// Checks that a copy between pool pages names existing pages, pairwise distinct.
    pub(crate) fn check_copy(&self, from: &[PageId], to: &[PageId]) -> Result<(), KvError> {
        let exists = |page: &PageId| (*page as usize) < self.pool_mappings.len();
        if from.len() != to.len() || !from.iter().chain(to).all(exists) {
            return Err(violation(format!(
                "copy from pool pages {from:?} to {to:?}: unequal or missing pages"
            )));
        }
        if let Some(page) = to.iter().find(|page| from.contains(page)) {
            return Err(violation(format!("copy of pool page {page} onto itself")));
        }
        Ok(())
    }

    /// Maximal runs of consecutive mapped virtual pages, as (first, count).
    pub(crate) fn mapped_runs(&self) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (page, &pool) in self.virtual_to_pool.iter().enumerate() {
            if pool == UNMAPPED {
                continue;
            }
            match runs.last_mut() {
                Some((first, count)) if *first + *count == page => *count += 1,
                _ => runs.push((page, 1)),
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_double_mappings_and_stray_unmaps() {
        let mut table = PageTable::new(8, 4);
        table.check_map(0, &[1, 2], false).expect("fresh pages");
        table.record_map(0, &[1, 2]);
        assert!(
            table.check_map(1, &[3], false).is_err(),
            "virtual page 1 is taken"
        );
        assert!(
            table.check_map(4, &[2], false).is_err(),
            "pool page 2 is mapped at 1"
        );
        assert!(
            table.check_map(4, &[3, 3], true).is_err(),
            "same pool page twice"
        );
        assert!(table.check_map(4, &[9], true).is_err(), "no such pool page");
        assert!(
            table.check_map(7, &[0, 3], false).is_err(),
            "past the region"
        );
        assert!(table.check_unmap(1, 2).is_err(), "page 2 is not mapped");
        table.check_unmap(0, 2).expect("both mapped");
        table.record_unmap(0, 1);
        assert_eq!(table.mapped_runs(), vec![(1, 1)]);
        assert_eq!(table.pool_page_at(1), Some(2));
        assert_eq!(table.mapped(), 1);
    }

    #[test]
    fn shared_pages_sit_at_several_addresses() {
        let mut table = PageTable::new(8, 4);
        table.record_map(0, &[1]);
        table
            .check_map(4, &[1], true)
            .expect("a shared page maps again");
        table.record_map(4, &[1]);
        assert_eq!(table.mappings(1), 2);
        table.record_unmap(0, 1);
        assert_eq!((table.mappings(1), table.pool_page_at(4)), (1, Some(1)));
        assert!(table.check_copy(&[1], &[2]).is_ok());
        assert!(table.check_copy(&[1], &[1]).is_err(), "onto itself");
        assert!(table.check_copy(&[1], &[9]).is_err(), "no such page");
        assert!(table.check_copy(&[1, 2], &[3]).is_err(), "unequal lists");
    }
}
