//! The prefix index: which physical pages hold the K/V of which token prefix, so that a new
//! sequence whose known tokens start with a cached prefix maps those pages into its own
//! virtually contiguous row instead of computing them. vAttention has no block tables; one
//! physical page mapped at several virtual addresses is the sharing.
//!
//! A *node* is one level of a slot row: one page per run (1 page in the interleaved layout,
//! `2 × layers` in the per-layer one). Its key is the chained hash of the last token with bytes
//! on that level, so a key names the whole prefix up to the level; the engine seeds the chain
//! with the model, patch tokenizer and layout. A node's pages are final when it is made (every
//! token with bytes on them is computed) and are never written again. Nodes are counted by the
//! live sequences that use them; one that no live sequence uses stays cached until its pages
//! are needed, and then goes in least-recently-released order, a sequence's deepest level first.
//!
//! Rows need not divide pages: a token may straddle two levels. A sequence only ever shares
//! levels that hold no byte of a token it computes; the level holding the first computed token's
//! first byte, if it also holds cached tokens, is the sequence's own and starts as a copy.
//!
//! Must not: map, unmap or write anything (the accounting turns its answers into page
//! operations), or see token ids (only the engine's hashes).

use std::collections::{BTreeSet, HashMap};

use super::backend::PageId;
use super::config::PartialPage;
use super::geometry::Geometry;

/// One link of a sequence's hash chain: the hash of its first `i + 1` tokens.
pub type TokenHash = u128;

/// Index of a node in the prefix index.
pub(crate) type NodeId = u32;

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) key: TokenHash,
    parent: Option<TokenHash>,
    pub(crate) level: usize,
    /// One page per run, in run order.
    pub(crate) pages: Vec<PageId>,
    /// Hashes of the tokens from the level's first token up to the last one whose bytes all lie
    /// on it: what a partial match compares.
    token_hashes: Vec<TokenHash>,
    refs: usize,
    stamp: u64,
}

/// What a lookup found for a new sequence: the levels it maps, the level it copies, and how
/// many of its tokens that covers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    /// Nodes mapped at levels `0..shared.len()`.
    pub(crate) shared: Vec<NodeId>,
    /// Level `shared.len()` is the sequence's own page and starts as a copy of this node's
    /// first `bytes` bytes in every run.
    pub(crate) copy: Option<(NodeId, usize)>,
    /// Tokens whose K/V the sequence holds once the pages are mapped and the copy is done.
    pub(crate) tokens: usize,
}

impl Hit {
    /// Every node the hit reads (the shared ones and the copy's source).
    pub(crate) fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.shared
            .iter()
            .copied()
            .chain(self.copy.map(|(node, _)| node))
    }
}

/// The index of one region.
#[derive(Debug)]
pub(crate) struct PrefixIndex {
    nodes: Vec<Option<Node>>,
    vacant: Vec<NodeId>,
    by_key: HashMap<TokenHash, NodeId>,
    /// Nodes by their parent's key (`None`: level 0), for partial matches.
    children: HashMap<Option<TokenHash>, Vec<NodeId>>,
    /// Nodes no live sequence uses, oldest release first.
    lru: BTreeSet<(u64, NodeId)>,
    /// The node each pool page belongs to.
    page_node: Vec<Option<NodeId>>,
    clock: u64,
    runs: usize,
    partial: PartialPage,
    /// Pages of nodes no live sequence uses.
    unreferenced_pages: usize,
    /// Pages of nodes two or more live sequences use.
    shared_pages: usize,
    node_pages: usize,
}

impl PrefixIndex {
    pub(crate) fn new(pool_pages: usize, runs: usize, partial: PartialPage) -> Self {
        Self {
            nodes: Vec::new(),
            vacant: Vec::new(),
            by_key: HashMap::new(),
            children: HashMap::new(),
            lru: BTreeSet::new(),
            page_node: vec![None; pool_pages],
            clock: 0,
            runs,
            partial,
            unreferenced_pages: 0,
            shared_pages: 0,
            node_pages: 0,
        }
    }

    fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize).and_then(Option::as_ref)
    }

    /// The node `id` (ids come from this index and stay valid until `remove`).
    pub(crate) fn node(&self, id: NodeId) -> &Node {
        self.get(id)
            .expect("node ids held by slots stay in the index")
    }

    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .expect("node ids held by slots stay in the index")
    }

    /// The node pool page `page` belongs to, if any.
    pub(crate) fn node_of_page(&self, page: PageId) -> Option<NodeId> {
        self.page_node.get(page as usize).copied().flatten()
    }

    /// The node of level `level` whose key is `key`.
    pub(crate) fn find(&self, key: TokenHash, level: usize) -> Option<NodeId> {
        let id = *self.by_key.get(&key)?;
        (self.node(id).level == level).then_some(id)
    }

    /// The longest cached prefix of a sequence of `known` tokens with chained hashes `hashes`,
    /// as levels to map and a level to copy. At least the last token is left to compute (its
    /// logits are what the sequence needs).
    pub(crate) fn lookup(&self, geometry: &Geometry, hashes: &[TokenHash], known: usize) -> Hit {
        let known = known.min(hashes.len());
        if known < 2 {
            return Hit::default();
        }
        let mut chain = Vec::new();
        let mut parent = None;
        while chain.len() < geometry.pages_per_run {
            let level = chain.len();
            let end = geometry.level_end_token(level);
            if end > known {
                break;
            }
            let key = hashes[end - 1];
            let Some(id) = self.find(key, level) else {
                break;
            };
            chain.push(id);
            parent = Some(key);
        }
        let matched = chain.len();
        let mut tokens = match matched {
            0 => 0,
            _ => geometry.level_whole_end(matched - 1),
        };
        let mut sibling = None;
        if self.partial == PartialPage::Copy && matched < geometry.pages_per_run {
            let first = geometry.level_first_token(matched);
            let own = hashes.get(first..known).unwrap_or_default();
            for &id in self.children.get(&parent).into_iter().flatten() {
                let common = (self.node(id).token_hashes.iter().zip(own))
                    .take_while(|(cached, mine)| cached == mine)
                    .count();
                if first + common > tokens {
                    tokens = first + common;
                    sibling = Some(id);
                }
            }
        }
        let tokens = tokens.min(known - 1);
        // The first computed token's first byte decides the first level the sequence writes.
        let written = tokens * geometry.run_token_bytes;
        let first_own = (written / geometry.page_bytes).min(matched);
        let copy_bytes = written - first_own * geometry.page_bytes;
        let copy = match (copy_bytes, chain.get(first_own).copied().or(sibling)) {
            (0, _) => None,
            (bytes, Some(source)) => Some((source, bytes.min(geometry.page_bytes))),
            (_, None) => {
                debug_assert!(false, "a hit ending inside a level has a page to copy from");
                return Hit::default();
            }
        };
        if tokens == 0 {
            return Hit::default();
        }
        chain.truncate(first_own);
        Hit {
            shared: chain,
            copy,
            tokens,
        }
    }

    /// Indexes `pages` (a slot's level `level`, all of whose tokens are computed) under `key`,
    /// used by the one live sequence that filled them. The key must not be indexed yet.
    pub(crate) fn insert(
        &mut self,
        key: TokenHash,
        parent: Option<TokenHash>,
        level: usize,
        pages: Vec<PageId>,
        token_hashes: Vec<TokenHash>,
    ) -> NodeId {
        debug_assert!(!self.by_key.contains_key(&key));
        debug_assert_eq!(pages.len(), self.runs);
        let id = self.vacant.pop().unwrap_or(self.nodes.len() as NodeId);
        for &page in &pages {
            self.page_node[page as usize] = Some(id);
        }
        self.node_pages += pages.len();
        let node = Node {
            key,
            parent,
            level,
            pages,
            token_hashes,
            refs: 1,
            stamp: 0,
        };
        match self.nodes.get_mut(id as usize) {
            Some(vacant) => *vacant = Some(node),
            None => self.nodes.push(Some(node)),
        }
        self.by_key.insert(key, id);
        self.children.entry(parent).or_default().push(id);
        id
    }

    /// A live sequence starts using node `id`.
    pub(crate) fn acquire(&mut self, id: NodeId) {
        let runs = self.runs;
        let node = self.node_mut(id);
        node.refs += 1;
        let (refs, stamp) = (node.refs, node.stamp);
        match refs {
            1 => {
                self.lru.remove(&(stamp, id));
                self.unreferenced_pages -= runs;
            }
            2 => self.shared_pages += runs,
            _ => {}
        }
    }

    /// A live sequence stops using node `id`; unused, it becomes the most recently released.
    pub(crate) fn release(&mut self, id: NodeId) {
        self.clock += 1;
        let (clock, runs) = (self.clock, self.runs);
        let node = self.node_mut(id);
        debug_assert!(node.refs > 0);
        node.refs = node.refs.saturating_sub(1);
        match node.refs {
            0 => {
                node.stamp = clock;
                self.lru.insert((clock, id));
                self.unreferenced_pages += runs;
            }
            1 => self.shared_pages -= runs,
            _ => {}
        }
    }

    /// Live sequences using node `id`.
    #[cfg(test)]
    pub(crate) fn refs(&self, id: NodeId) -> usize {
        self.node(id).refs
    }

    /// The node to evict first: unused, released longest ago.
    pub(crate) fn oldest_unreferenced(&self) -> Option<NodeId> {
        self.lru.first().map(|&(_, id)| id)
    }

    /// Removes unused node `id` from the index; its pages are the caller's to free.
    pub(crate) fn remove(&mut self, id: NodeId) -> Node {
        let node = self
            .nodes
            .get_mut(id as usize)
            .and_then(Option::take)
            .expect("node ids held by slots stay in the index");
        debug_assert_eq!(node.refs, 0, "only unused nodes are evicted");
        self.lru.remove(&(node.stamp, id));
        self.unreferenced_pages -= node.pages.len();
        self.node_pages -= node.pages.len();
        self.by_key.remove(&node.key);
        if let Some(siblings) = self.children.get_mut(&node.parent) {
            siblings.retain(|&sibling| sibling != id);
            if siblings.is_empty() {
                self.children.remove(&node.parent);
            }
        }
        for &page in &node.pages {
            self.page_node[page as usize] = None;
        }
        self.vacant.push(id);
        node
    }

    /// Pages of the nodes `hit` reads that no live sequence uses yet (they are evictable now,
    /// and will not be once the hit's sequence holds them).
    pub(crate) fn unreferenced_pages_of(&self, hit: &Hit) -> usize {
        hit.nodes()
            .filter(|&id| self.node(id).refs == 0)
            .map(|id| self.node(id).pages.len())
            .sum()
    }

    /// Pages of nodes no live sequence uses (evictable).
    pub(crate) fn unreferenced_pages(&self) -> usize {
        self.unreferenced_pages
    }

    /// Pages of nodes some live sequence uses.
    pub(crate) fn referenced_pages(&self) -> usize {
        self.node_pages - self.unreferenced_pages
    }

    /// Pages of nodes two or more live sequences use.
    pub(crate) fn shared_pages(&self) -> usize {
        self.shared_pages
    }

    /// Pages in the index.
    pub(crate) fn pages(&self) -> usize {
        self.node_pages
    }

    /// Every node's id (for consistency checks).
    #[cfg(test)]
    pub(crate) fn ids(&self) -> Vec<NodeId> {
        (self.nodes.iter().enumerate())
            .filter(|(_, node)| node.is_some())
            .map(|(id, _)| id as NodeId)
            .collect()
    }
}

#[cfg(test)]
mod tests;
