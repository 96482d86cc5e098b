//! Prefix index tests: what a lookup shares, copies and leaves to compute, on rows that divide
//! pages and rows that straddle them; reference counts, LRU order and eviction bookkeeping.

use super::*;
use crate::kv::config::{KvConfig, KvLayout};

/// Interleaved, 2 layers × 8 KV heads × f32: head_dim 128 gives 16,384-byte rows (128 tokens
/// per page); head_dim 96 gives 12,288-byte rows (170.67 per page: tokens straddle pages).
fn geometry(head_dim: usize) -> Geometry {
    let mut config = KvConfig::for_model(2, 8, head_dim, 4);
    config.layout = KvLayout::Interleaved;
    config.max_seqs = 4;
    config.max_context_len = 2048;
    Geometry::new(&config).expect("valid test shape")
}

/// Chained "hashes" of a sequence: position `i` of sequence `seq` until `diverge`, then the
/// sequence's own (distinct values make distinct prefixes, as a real hash chain does).
fn hashes(len: usize, diverge: usize, seq: u128) -> Vec<TokenHash> {
    (0..len)
        .map(|i| match i < diverge {
            true => i as TokenHash + 1,
            false => (seq << 64) | (i as TokenHash + 1),
        })
        .collect()
}

/// Indexes the first `levels` levels of `hashes` as one sequence would publish them, pages
/// numbered from `first_page`.
fn publish(
    index: &mut PrefixIndex,
    geometry: &Geometry,
    hashes: &[TokenHash],
    levels: usize,
    first_page: PageId,
) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = Vec::new();
    for level in 0..levels {
        let key = hashes[geometry.level_end_token(level) - 1];
        if let Some(node) = index.find(key, level) {
            nodes.push(node);
            continue;
        }
        let parent = nodes.last().map(|&node| index.node(node).key);
        let tokens =
            hashes[geometry.level_first_token(level)..geometry.level_whole_end(level)].to_vec();
        let page = first_page + level as PageId;
        nodes.push(index.insert(key, parent, level, vec![page], tokens));
    }
    nodes
}

#[test]
fn whole_levels_are_shared_and_the_last_token_is_left_to_compute() {
    let geometry = geometry(128);
    assert_eq!(geometry.tokens_per_page(), 128);
    let mut index = PrefixIndex::new(64, 1, PartialPage::Copy);
    let cached = hashes(400, 400, 0);
    let nodes = publish(&mut index, &geometry, &cached, 3, 0);
    // Longer sequence, same first 384 tokens: three whole pages, nothing to copy.
    let hit = index.lookup(&geometry, &hashes(500, 450, 1), 500);
    assert_eq!(
        (hit.shared.clone(), hit.copy, hit.tokens),
        (nodes.clone(), None, 384)
    );
    // Exactly the cached 384 tokens: the last one is computed again, so the page it lies on is
    // the sequence's own, copied.
    let hit = index.lookup(&geometry, &cached[..384], 384);
    let row = geometry.run_token_bytes;
    assert_eq!(hit.shared, nodes[..2]);
    assert_eq!(hit.copy, Some((nodes[2], 127 * row)));
    assert_eq!(hit.tokens, 383);
    // Nothing in common.
    assert_eq!(
        index.lookup(&geometry, &hashes(300, 0, 2), 300),
        Hit::default()
    );
    assert_eq!(index.lookup(&geometry, &cached[..1], 1), Hit::default());
}

#[test]
fn diverging_inside_a_page_copies_or_recomputes_its_cached_part() {
    let geometry = geometry(128);
    let row = geometry.run_token_bytes;
    for partial in [PartialPage::Copy, PartialPage::Recompute] {
        let mut index = PrefixIndex::new(64, 1, partial);
        let nodes = publish(&mut index, &geometry, &hashes(400, 400, 0), 3, 0);
        let inside = index.lookup(&geometry, &hashes(400, 200, 1), 400);
        let at_boundary = index.lookup(&geometry, &hashes(400, 256, 1), 400);
        assert_eq!(at_boundary.shared, nodes[..2], "{partial:?}");
        assert_eq!((at_boundary.copy, at_boundary.tokens), (None, 256));
        assert_eq!(inside.shared, nodes[..1], "{partial:?}");
        match partial {
            PartialPage::Copy => {
                assert_eq!(
                    (inside.copy, inside.tokens),
                    (Some((nodes[1], 72 * row)), 200)
                )
            }
            PartialPage::Recompute => assert_eq!((inside.copy, inside.tokens), (None, 128)),
        }
    }
}

#[test]
fn a_straddling_row_keeps_the_page_it_starts_on_private() {
    let geometry = geometry(96);
    let row = geometry.run_token_bytes;
    for partial in [PartialPage::Copy, PartialPage::Recompute] {
        let mut index = PrefixIndex::new(64, 1, partial);
        let cached = hashes(400, 400, 0);
        let nodes = publish(&mut index, &geometry, &cached, 2, 0);
        // Tokens 0..341 lie wholly on pages 0 and 1; token 341 starts on page 1 and ends on
        // page 2, so computing it writes page 1: page 1 is copied, not shared.
        let hit = index.lookup(&geometry, &hashes(400, 390, 1), 400);
        assert_eq!(hit.shared, nodes[..1], "{partial:?}");
        assert_eq!(hit.tokens, 341);
        assert_eq!(hit.copy, Some((nodes[1], 341 * row - geometry.page_bytes)));
        assert!(
            hit.tokens * row >= hit.shared.len() * geometry.page_bytes,
            "no computed byte lands on a shared page"
        );
    }
}

#[test]
fn every_hit_leaves_computed_bytes_off_shared_pages() {
    for head_dim in [96, 128, 80] {
        let geometry = geometry(head_dim);
        let row = geometry.run_token_bytes;
        let mut index = PrefixIndex::new(64, 1, PartialPage::Copy);
        publish(&mut index, &geometry, &hashes(1500, 1500, 0), 6, 0);
        for diverge in (0..1500).step_by(37) {
            for known in [diverge, diverge + 1, diverge + 50, 1500] {
                let hit = index.lookup(&geometry, &hashes(1500, diverge, 1), known);
                assert!(hit.tokens < known.max(1), "{head_dim} {diverge} {known}");
                assert!(hit.tokens <= diverge, "cached tokens past the divergence");
                let shared_bytes = hit.shared.len() * geometry.page_bytes;
                assert!(
                    hit.tokens * row >= shared_bytes,
                    "computed byte on a shared page"
                );
                let copied = hit.copy.map_or(0, |(_, bytes)| bytes);
                assert_eq!(
                    shared_bytes + copied,
                    hit.tokens * row,
                    "cached bytes all there"
                );
            }
        }
    }
}

#[test]
fn references_lru_order_and_removal_keep_the_counts() {
    let geometry = geometry(128);
    let mut index = PrefixIndex::new(64, 1, PartialPage::Copy);
    let nodes = publish(&mut index, &geometry, &hashes(400, 400, 0), 3, 10);
    assert_eq!((index.pages(), index.referenced_pages()), (3, 3));
    // A second sequence uses the first two: shared; then both leave, deepest level first.
    index.acquire(nodes[0]);
    index.acquire(nodes[1]);
    assert_eq!(index.shared_pages(), 2);
    for &node in nodes.iter().rev() {
        index.release(node);
    }
    assert_eq!((index.shared_pages(), index.unreferenced_pages()), (0, 1));
    index.release(nodes[1]);
    index.release(nodes[0]);
    assert_eq!(index.unreferenced_pages(), 3);
    assert_eq!(
        index.oldest_unreferenced(),
        Some(nodes[2]),
        "deepest level goes first"
    );
    assert_eq!(index.node_of_page(12), Some(nodes[2]));
    let removed = index.remove(nodes[2]);
    assert_eq!(removed.pages, vec![12]);
    assert_eq!(index.node_of_page(12), None);
    assert_eq!((index.pages(), index.unreferenced_pages()), (2, 2));
    assert_eq!(index.oldest_unreferenced(), Some(nodes[1]));
    // Used again: out of the LRU; its removed child is no longer found.
    index.acquire(nodes[1]);
    assert_eq!(index.oldest_unreferenced(), Some(nodes[0]));
    let hit = index.lookup(&geometry, &hashes(400, 400, 0), 400);
    assert_eq!(hit.shared.len(), 2);
    assert_eq!(hit.tokens, 256);
}
