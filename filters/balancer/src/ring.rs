//! `ring_hash`: a weighted consistent-hash ring, built when a cluster's endpoints change.

use spindle_sdk::Endpoint;

/// Points per unit of weight, unless the config says otherwise (Ketama's 160).
pub(crate) const DEFAULT_POINTS_PER_WEIGHT: u32 = 160;
/// The largest ring built: weights are scaled down proportionally past it.
pub(crate) const MAX_RING_SIZE: u64 = 1 << 16;

/// FNV-1a over `bytes`, then murmur3's 64-bit finalizer so that near-equal inputs (`a#1`, `a#2`)
/// land far apart. Stable across instances, builds and restarts: rings agree everywhere.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A hash ring: points sorted by hash, each naming an index into the cluster's endpoint list.
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// `(point, endpoint index)`, sorted by point.
    points: Vec<(u64, u32)>,
    /// How many distinct endpoints the ring holds.
    endpoints: usize,
}

impl Ring {
    /// Builds the ring: `weight * points_per_weight` points per endpoint, scaled down
    /// proportionally when the ring would exceed [`MAX_RING_SIZE`] (every endpoint keeps a
    /// point). Points are hashes of `address#n` and their number does not depend on the other
    /// endpoints, so an endpoint keeps its points when others come or go: only the keys of the
    /// endpoint that leaves (or of the arcs the newcomer takes) move.
    pub(crate) fn new(endpoints: &[Endpoint], points_per_weight: u32) -> Ring {
        let total: u64 = endpoints.iter().map(|e| u64::from(e.weight.max(1))).sum();
        if total == 0 {
            return Ring::default();
        }
        let scale = u64::from(points_per_weight.max(1));
        let size = total.saturating_mul(scale);
        let mut points = Vec::with_capacity(usize::try_from(size.min(MAX_RING_SIZE)).unwrap_or(0));
        let mut label = String::new();
        for (index, e) in endpoints.iter().enumerate() {
            let mut count = u64::from(e.weight.max(1)) * scale;
            if size > MAX_RING_SIZE {
                count = (count * MAX_RING_SIZE / size).max(1);
            }
            for n in 0..count {
                label.clear();
                label.push_str(&e.address);
                label.push('#');
                label.push_str(&n.to_string());
                points.push((hash(label.as_bytes()), index as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            endpoints: endpoints.len(),
        }
    }

    /// How many points the ring has.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.points.len()
    }

    /// The endpoint index for `key_hash`: the owner of the first point at or after it (wrapping).
    ///
    /// For a retry, `skip` distinct endpoints are passed over going clockwise (the ones earlier
    /// attempts used), and `avoid` is never returned when another endpoint exists. A binary
    /// search plus a short walk: no allocation but a handful of indices for `skip`.
    pub(crate) fn pick(&self, key_hash: u64, skip: usize, avoid: Option<usize>) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(p, _)| p < key_hash);
        let len = self.points.len();
        let skip = skip % self.endpoints.max(1);
        let mut seen: Vec<u32> = Vec::new();
        let mut fallback = None;
        for i in 0..len {
            let index = self.points[(start + i) % len].1;
            if seen.contains(&index) {
                continue;
            }
            if seen.len() >= skip && Some(index as usize) != avoid {
                return Some(index as usize);
            }
            fallback.get_or_insert(index as usize);
            seen.push(index);
            if seen.len() == self.endpoints {
                break;
            }
        }
        // Every endpoint was passed over (or is `avoid`): the key's owner, else the only one.
        seen.into_iter()
            .map(|i| i as usize)
            .find(|&i| Some(i) != avoid)
            .or(fallback)
    }
}
