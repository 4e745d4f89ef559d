//! Tables kept per open tunnel that give their memory back after a surge
//! (the relocation list, the per-client caps). A file of its own, importing
//! nothing: the stages that keep such tables all use it.

/// Below this a table is not worth shrinking.
const MIN_TABLE_CAPACITY: usize = 64;

/// Halves (or more) a table kept per open tunnel once it is three-quarters
/// empty: a hash map keeps the buckets its busiest moment grew (200 KiB
/// after 4,000 tunnels) until it is dropped. Called after each removal; a
/// table shrinks only when its size has fallen by half since it last
/// changed capacity, so no insert pays for a shrink twice.
pub fn shrink_when_sparse<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    table: &mut std::collections::HashMap<K, V, S>,
) {
    if table.capacity() > MIN_TABLE_CAPACITY && table.len() * 4 < table.capacity() {
        table.shrink_to((table.len() * 2).max(MIN_TABLE_CAPACITY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_gives_back_its_memory_after_a_surge() {
        let mut table: std::collections::HashMap<u64, u64> = (0..4_000).map(|n| (n, n)).collect();
        let at_peak = table.capacity();
        for n in 10..4_000 {
            table.remove(&n);
            shrink_when_sparse(&mut table);
        }
        assert!(
            table.capacity() <= 4 * MIN_TABLE_CAPACITY,
            "{} of {at_peak} kept for 10 entries",
            table.capacity()
        );
        assert_eq!(table.len(), 10);
    }
}
