//! 64-bit fingerprint -> small value, in memory: the live index's tables.
//!
//! The keys are already uniform hashes, and there are many of them (one per
//! live window: ~10 M at the scale the project targets), so the table is
//! built for density. Open addressing with *ordered* linear probing (Amble
//! and Knuth, 1974): a key's home slot is `fp * capacity / 2^64`, which grows
//! with the key, and every run of occupied slots is kept sorted by key. A
//! search stops at the first larger key, so a miss costs what a hit does,
//! and the table can be filled to 90 % (a general-purpose table such as
//! hashbrown grows at 87.5 % by doubling, so it is between 44 % and 87.5 %
//! full, and its slots carry a control byte). Here a table grows by a third
//! when it is 90 % full: 75–90 % full, 12 bytes a slot for a `u32` value.
//!
//! No tombstones: a removal shifts the rest of its run back (Knuth's
//! algorithm R), and `retain` compacts every run in one pass. The runs do not
//! wrap around: the array has spare slots past the last home, and its last
//! slot is always empty, which ends every search.
//!
//! The price is the insert: it shifts the rest of its run by one slot, and
//! runs are a few cache lines long at 75–90 %. Against hashbrown, measured
//! (BENCHMARKS.md, scale curve, 2026-12-06): ~60 MiB less at 10 M live
//! windows, ~5 % of one-core `scan` throughput. A bucketized cuckoo table of
//! the same density was tried and was slower still (each growth re-places
//! every entry at random; here a growth is one sequential pass).

/// A 64-bit fingerprint kept as two halves: aligned to 4 bytes, so that a
/// slot with a `u32` value is 12 bytes, not 16. Zero marks an empty slot
/// (the key 0 is kept beside the slots).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct Fp([u32; 2]);

impl Fp {
    #[inline]
    fn new(k: u64) -> Self {
        Fp([k as u32, (k >> 32) as u32])
    }

    #[inline]
    fn get(self) -> u64 {
        self.0[0] as u64 | (self.0[1] as u64) << 32
    }
}

#[derive(Clone, Copy, Default)]
struct Slot<V> {
    fp: Fp,
    v: V,
}

/// A value whose all-zero bytes are its default: an empty slot is zeroed
/// memory.
///
/// # Safety
/// All-zero bytes must be a valid value of the type.
pub unsafe trait ZeroIsDefault: Copy + Default {}
// SAFETY: integers are valid as zero
unsafe impl ZeroIsDefault for u32 {}
// SAFETY: as above
unsafe impl ZeroIsDefault for u64 {}

/// The slots of a table, zeroed. A large table (from [`MAP_BYTES`] on: ~10 MB
/// each of 16 at 10 M live windows) is mapped from the OS on its own and
/// unmapped when it is dropped: the global allocator (mimalloc) keeps a freed
/// block a while, and glibc's malloc keeps a freed block below its moving
/// mmap threshold, so when the 16 tables grew one after the other, their old
/// blocks were all held at once (~50 MiB of peak RSS at 10 M live). Small
/// tables come from the global allocator.
struct Slots<V: ZeroIsDefault> {
    ptr: std::ptr::NonNull<Slot<V>>,
    len: usize,
}

// SAFETY: `Slots` owns its memory, as a `Box<[Slot<V>]>` would
unsafe impl<V: ZeroIsDefault + Send> Send for Slots<V> {}
// SAFETY: as above
unsafe impl<V: ZeroIsDefault + Sync> Sync for Slots<V> {}

/// Tables of at least this many bytes are mapped on their own.
const MAP_BYTES: usize = 1 << 20;

impl<V: ZeroIsDefault> Slots<V> {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::array::<Slot<V>>(len).expect("a table fits in memory")
    }

    fn mapped(layout: std::alloc::Layout) -> bool {
        cfg!(unix) && layout.size() >= MAP_BYTES
    }

    /// `len` empty slots.
    fn zeroed(len: usize) -> Self {
        if len == 0 {
            return Slots {
                ptr: std::ptr::NonNull::dangling(),
                len: 0,
            };
        }
        let layout = Self::layout(len);
        let raw = if Self::mapped(layout) {
            map_zeroed(layout.size())
        } else {
            // SAFETY: the layout has a nonzero size
            unsafe { std::alloc::alloc_zeroed(layout) }
        };
        let Some(ptr) = std::ptr::NonNull::new(raw.cast::<Slot<V>>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        Slots { ptr, len }
    }
}

/// Fresh zero pages from the OS (null when refused); page aligned, which
/// is more than any slot needs.
#[cfg(unix)]
fn map_zeroed(bytes: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping touches no existing memory
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

#[cfg(not(unix))]
fn map_zeroed(_: usize) -> *mut u8 {
    unreachable!("tables are mapped on unix only")
}

impl<V: ZeroIsDefault> Drop for Slots<V> {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        let layout = Self::layout(self.len);
        if Self::mapped(layout) {
            #[cfg(unix)]
            // SAFETY: mapped by `zeroed` with this size, unmapped once
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), layout.size());
            }
        } else {
            // SAFETY: allocated by `zeroed` with this layout
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) }
        }
    }
}

impl<V: ZeroIsDefault> std::ops::Deref for Slots<V> {
    type Target = [Slot<V>];
    fn deref(&self) -> &[Slot<V>] {
        // SAFETY: `len` zero-initialised (then written) slots, or dangling and empty
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<V: ZeroIsDefault> std::ops::DerefMut for Slots<V> {
    fn deref_mut(&mut self) -> &mut [Slot<V>] {
        // SAFETY: as in `deref`, borrowed mutably once
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<V: ZeroIsDefault> Clone for Slots<V> {
    fn clone(&self) -> Self {
        let mut c = Slots::zeroed(self.len);
        c.copy_from_slice(self);
        c
    }
}

/// Sub-tables of an [`FpMap`], chosen by the key's low bits (the home slot
/// comes from its high bits). A table grows by copying itself; split in 16,
/// only one sixteenth is copied at a time.
const PARTS: usize = 16;

/// A table grows when more than `MAX_LOAD_PER_MILLE` of its homes are used...
const MAX_LOAD_PER_MILLE: usize = 900;
/// ...to this share of them.
const GROWN_LOAD_PER_MILLE: usize = 750;
/// and shrinks, after a `retain`, below this share (to `GROWN_LOAD_PER_MILLE`).
const MIN_LOAD_PER_MILLE: usize = 300;
const MIN_HOMES: usize = 64;

/// Spare slots past the last home, for the runs that start near the end.
fn spare(homes: usize) -> usize {
    64 + homes / 128
}

#[derive(Clone)]
struct Part<V: ZeroIsDefault> {
    /// `homes + spare(homes)` slots, the last one always empty
    slots: Slots<V>,
    homes: usize,
    /// occupied slots
    len: usize,
    zero: Option<V>,
}

impl<V: ZeroIsDefault> Default for Part<V> {
    fn default() -> Self {
        Part {
            slots: Slots::zeroed(0),
            homes: 0,
            len: 0,
            zero: None,
        }
    }
}

impl<V: ZeroIsDefault> Part<V> {
    #[inline]
    fn home(&self, k: u64) -> usize {
        ((k as u128 * self.homes as u128) >> 64) as usize
    }

    /// The slot of `k` (nonzero), or where it would go.
    #[inline]
    fn search(&self, k: u64) -> Result<usize, usize> {
        if self.slots.is_empty() {
            return Err(0);
        }
        let mut i = self.home(k);
        loop {
            let f = self.slots[i].fp.get();
            if f == k {
                return Ok(i);
            }
            if f == 0 || f > k {
                return Err(i);
            }
            i += 1;
        }
    }

    /// Asks the CPU to bring `k`'s home slot, and the cache lines after
    /// it up to `lines` in all, into cache (a hint: no effect on what the
    /// table holds).
    #[inline]
    fn prefetch(&self, k: u64, lines: usize) {
        if self.slots.is_empty() || lines == 0 {
            return;
        }
        let slot: *const u8 = (&self.slots[self.home(k)] as *const Slot<V>).cast();
        // the line of the slot and the `lines - 1` after it
        super::cache::prefetch(slot, 64 * (lines - 1) + 1);
    }

    #[inline]
    fn get(&self, k: u64) -> Option<&V> {
        if k == 0 {
            return self.zero.as_ref();
        }
        self.search(k).ok().map(|i| &self.slots[i].v)
    }

    fn insert(&mut self, k: u64, v: V) -> Option<V> {
        if k == 0 {
            return self.zero.replace(v);
        }
        loop {
            let i = match self.search(k) {
                Ok(i) => return Some(std::mem::replace(&mut self.slots[i].v, v)),
                Err(i) => i,
            };
            if (self.len + 1) * 1000 > self.homes * MAX_LOAD_PER_MILLE {
                self.rebuild((self.len + 1) * 1000 / GROWN_LOAD_PER_MILLE + 1, 0);
                continue;
            }
            // the end of the run, which moves up by one
            let mut e = i;
            while self.slots[e].fp.get() != 0 {
                e += 1;
            }
            if e + 1 < self.slots.len() {
                self.slots.copy_within(i..e, i + 1);
                self.slots[i] = Slot { fp: Fp::new(k), v };
                self.len += 1;
                return None;
            }
            // the run would fill the last slot: twice the spare slots
            self.rebuild(self.homes, 2 * (self.slots.len() - self.homes));
        }
    }

    fn remove(&mut self, k: u64) -> Option<V> {
        if k == 0 {
            return self.zero.take();
        }
        let i = self.search(k).ok()?;
        let v = self.slots[i].v;
        // the entries after it that are not at their home move back by one
        let mut j = i + 1;
        loop {
            let f = self.slots[j].fp.get();
            if f == 0 || self.home(f) >= j {
                break;
            }
            j += 1;
        }
        self.slots.copy_within(i + 1..j, i);
        self.slots[j - 1] = Slot::default();
        self.len -= 1;
        Some(v)
    }

    fn retain(&mut self, f: &mut impl FnMut(&u64, &mut V) -> bool) {
        if let Some(v) = &mut self.zero {
            if !f(&0, v) {
                self.zero = None;
            }
        }
        // every kept entry moves to the first free slot at or after its
        // home: never past where it was, so one pass in slot order does it
        // (`w`: the slot after the last kept entry; `moved`: whether an
        // entry before it in its run was removed, else it stays put)
        let mut w = 0;
        let mut moved = false;
        for r in 0..self.slots.len() {
            let k = self.slots[r].fp.get();
            if k == 0 {
                moved = false;
                continue;
            }
            if !f(&k, &mut self.slots[r].v) {
                self.slots[r] = Slot::default();
                self.len -= 1;
                moved = true;
                continue;
            }
            if moved {
                let t = w.max(self.home(k));
                if t != r {
                    self.slots[t] = self.slots[r];
                    self.slots[r] = Slot::default();
                }
                w = t + 1;
            } else {
                w = r + 1;
            }
        }
        if self.homes > MIN_HOMES && self.len * 1000 < self.homes * MIN_LOAD_PER_MILLE {
            self.rebuild(self.len * 1000 / GROWN_LOAD_PER_MILLE + 1, 0);
        }
    }

    /// Moves every entry into a table of (at least) `homes` homes and
    /// `min_spare` spare slots.
    fn rebuild(&mut self, homes: usize, min_spare: usize) {
        let homes = homes.max(MIN_HOMES);
        let mut spare = spare(homes).max(min_spare);
        'size: loop {
            let mut next = Part {
                slots: Slots::zeroed(homes + spare),
                homes,
                len: self.len,
                zero: self.zero,
            };
            // the slots are in key order, and so are the new homes
            let mut w = 0;
            for s in self.slots.iter().filter(|s| s.fp.get() != 0) {
                let t = w.max(next.home(s.fp.get()));
                if t + 1 >= next.slots.len() {
                    spare *= 2;
                    continue 'size;
                }
                next.slots[t] = *s;
                w = t + 1;
            }
            *self = next;
            return;
        }
    }
}

/// 64-bit fingerprint -> `V`, split into [`PARTS`] tables by the low bits of
/// the fingerprint.
#[derive(Clone)]
pub struct FpMap<V: ZeroIsDefault> {
    parts: [Part<V>; PARTS],
}

impl<V: ZeroIsDefault> Default for FpMap<V> {
    fn default() -> Self {
        FpMap {
            parts: std::array::from_fn(|_| Part::default()),
        }
    }
}

impl<V: ZeroIsDefault> FpMap<V> {
    #[inline]
    fn part(&self, k: u64) -> &Part<V> {
        &self.parts[k as usize % PARTS]
    }

    #[inline]
    fn part_mut(&mut self, k: u64) -> &mut Part<V> {
        &mut self.parts[k as usize % PARTS]
    }

    #[inline]
    pub fn get(&self, k: &u64) -> Option<&V> {
        self.part(*k).get(*k)
    }

    /// Brings the slot where `k` is looked up first, and the cache lines
    /// after it up to `lines` in all, into cache ahead of the
    /// lookup: a table of millions of live entries is mostly not in cache,
    /// and a lookup issued a few requests ahead overlaps the miss with
    /// their work. Changes nothing the table holds.
    #[inline]
    pub fn prefetch(&self, k: u64, lines: usize) {
        self.part(k).prefetch(k, lines)
    }

    #[inline]
    pub fn insert(&mut self, k: u64, v: V) -> Option<V> {
        self.part_mut(k).insert(k, v)
    }

    #[inline]
    pub fn remove(&mut self, k: &u64) -> Option<V> {
        self.part_mut(*k).remove(*k)
    }

    pub fn retain(&mut self, mut f: impl FnMut(&u64, &mut V) -> bool) {
        for p in &mut self.parts {
            p.retain(&mut f);
        }
    }

    pub fn len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.len + p.zero.is_some() as usize)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes of the slots.
    pub fn heap_bytes(&self) -> usize {
        self.parts
            .iter()
            .map(|p| p.slots.len() * std::mem::size_of::<Slot<V>>())
            .sum()
    }

    /// Checks the table's invariants (tests).
    #[cfg(test)]
    fn check(&self) {
        for p in &self.parts {
            let mut prev = 0u64;
            let mut n = 0;
            for (i, s) in p.slots.iter().enumerate() {
                let k = s.fp.get();
                if k == 0 {
                    continue;
                }
                n += 1;
                assert!(k > prev, "runs sorted by key");
                assert!(p.home(k) <= i, "no entry before its home");
                assert!(
                    (p.home(k)..i).all(|j| p.slots[j].fp.get() != 0),
                    "no gap between an entry and its home"
                );
                prev = k;
            }
            assert_eq!(n, p.len);
            assert_eq!(p.slots.last().map_or(0, |s| s.fp.get()), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mix(k: u64) -> u64 {
        let k = (k ^ (k >> 7)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        k ^ (k >> 31)
    }

    #[test]
    fn the_split_map_behaves_like_one_map() {
        let mut m = FpMap::default();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // 5 000 distinct keys, mixed like the fingerprints they stand for
            let k = mix((x >> 33) % 5_000);
            match i % 3 {
                0 | 1 => assert_eq!(m.insert(k, i), model.insert(k, i)),
                _ => assert_eq!(m.remove(&k), model.remove(&k)),
            }
            assert_eq!(m.get(&k), model.get(&k));
        }
        m.check();
        assert_eq!(m.len(), model.len());
        m.retain(|_, v| *v % 2 == 0);
        model.retain(|_, v| *v % 2 == 0);
        m.check();
        assert_eq!(m.len(), model.len());
        for (k, v) in &model {
            assert_eq!(m.get(k), Some(v));
        }
        let used = m.parts.iter().filter(|p| p.len > 0).count();
        assert_eq!(used, PARTS, "keys spread over every part");
        // a copy is a map of its own
        let mut copy = m.clone();
        copy.check();
        for (k, v) in &model {
            assert_eq!(copy.get(k), Some(v));
            copy.remove(k);
            assert_eq!(m.get(k), Some(v));
        }
        assert!(copy.is_empty());
        drop(m);
        let empty = FpMap::<u64>::default().clone();
        assert!(empty.is_empty());
    }

    #[test]
    fn filled_to_ninety_per_cent_at_most_and_three_quarters_after_growing() {
        let mut m = FpMap::<u32>::default();
        for i in 1..=200_000u64 {
            m.insert(mix(i), i as u32);
        }
        m.check();
        for p in &m.parts {
            let load = p.len as f64 / p.homes as f64;
            assert!((0.74..=0.9).contains(&load), "load {load}");
        }
        // 12 bytes a slot, about 1/0.9 to 1/0.75 slots an entry, a little spare
        let per_entry = m.heap_bytes() as f64 / m.len() as f64;
        assert!(
            (13.0..16.5).contains(&per_entry),
            "{per_entry} bytes an entry"
        );
        // a sweep that leaves few shrinks the tables
        m.retain(|k, _| k % 64 == 0);
        m.check();
        assert!(m.heap_bytes() < 20 * 4096 * 12, "{}", m.heap_bytes());
    }

    #[test]
    fn a_run_at_the_end_of_the_table_makes_room_for_itself() {
        // keys of one part (same low bits) whose homes are all the last one:
        // a run longer than the spare slots past it
        let mut m = FpMap::<u32>::default();
        let keys: Vec<u64> = (0..2_000u64).map(|i| u64::MAX - (i << 4)).collect();
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(m.insert(k, i as u32), None);
        }
        m.check();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.get(k), Some(&(i as u32)));
        }
        for k in keys.iter().step_by(2) {
            assert!(m.remove(k).is_some());
        }
        m.check();
        assert_eq!(m.len(), 1_000);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u32),
        Remove(u64),
        Retain(u32),
    }

    /// Keys from a small set (hits, misses and re-inserts), with the edges
    /// of the key space: 0 (kept apart), 1 and u64::MAX (first and last home),
    /// and clusters of near keys of one part (equal homes: long runs, one
    /// at the end of the table).
    fn key() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::MAX),
            Just(u64::MAX - 1),
            (0u64..64).prop_map(|i| u64::MAX - (i << 4)),
            (0u64..64).prop_map(|i| (1 << 63) + (i << 4)),
            (0u64..400).prop_map(mix),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (key(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => key().prop_map(Op::Remove),
            1 => (1u32..5).prop_map(Op::Retain),
        ]
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec(op(), 1..600)) {
            let mut m = FpMap::default();
            let mut model = std::collections::HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(m.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(m.remove(&k), model.remove(&k)),
                    Op::Retain(d) => {
                        let keep = |k: &u64, v: &mut u32| !k.wrapping_add(*v as u64).is_multiple_of(d as u64);
                        m.retain(keep);
                        model.retain(|k, v| keep(k, v));
                    }
                }
                prop_assert_eq!(m.len(), model.len());
            }
            m.check();
            for (k, v) in &model {
                prop_assert_eq!(m.get(k), Some(v));
            }
            for k in [0u64, 1, 2, u64::MAX, u64::MAX - 1, 1 << 63] {
                prop_assert_eq!(m.get(&k), model.get(&k));
            }
        }
    }
}
