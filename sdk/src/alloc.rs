//! The filters' allocator on `wasm32`: small blocks from per-size free lists, the rest from the
//! standard allocator.
//!
//! A filter allocates little per request, but what it allocates is freed before the hook returns:
//! a host call's string result (the host writes it through `cabi_realloc`), a header value, a
//! formatted reply. The standard `wasm32` allocator (dlmalloc) spends a few hundred instructions
//! on each such pair; here an allocation of up to [`MAX_SMALL`] bytes is a pop from the free list
//! of its power-of-two size class and a release a push, a few instructions each. A class's list
//! gets its blocks from the standard allocator when empty and keeps them: the memory held is the
//! most the filter ever had in use in each class, bounded like everything else by the instance's
//! memory cap. Larger blocks and alignments above 16 go to the standard allocator directly.
//!
//! On by default (the `allocator` feature, installed as the global allocator on `wasm32`
//! only); a filter that wants its own turns the feature off. The pool itself is plain code,
//! tested natively over the system allocator.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// The smallest class: room for the free list's link, and 16-byte aligned.
const MIN_SMALL: usize = 16;
/// The largest size served from the free lists.
pub const MAX_SMALL: usize = 2048;
/// Classes 16, 32, ..., 2048 bytes.
const CLASSES: usize = (MAX_SMALL / MIN_SMALL).trailing_zeros() as usize + 1;

/// Size-class free lists over a backing allocator. Not for threads: it has no lock, so it may
/// only be shared where there is one thread (`wasm32` without the atomics feature).
pub struct Pool<A> {
    backing: A,
    /// The first free block of each class; each free block's first word points to the next.
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

impl<A> Pool<A> {
    /// An empty pool taking its blocks from `backing`.
    pub const fn new(backing: A) -> Pool<A> {
        Pool {
            backing,
            free: UnsafeCell::new([ptr::null_mut(); CLASSES]),
        }
    }
}

/// The class of a block of `layout`: `None` when the backing allocator serves it.
fn class(layout: Layout) -> Option<usize> {
    if layout.size() > MAX_SMALL || layout.align() > MIN_SMALL {
        return None;
    }
    let rounded = layout.size().max(MIN_SMALL).next_power_of_two();
    Some((rounded / MIN_SMALL).trailing_zeros() as usize)
}

/// The layout in which the backing allocator gives out blocks of `class`.
fn class_layout(class: usize) -> Layout {
    // Sizes are powers of two from 16 to MAX_SMALL with alignment 16: always valid.
    Layout::from_size_align(MIN_SMALL << class, MIN_SMALL).expect("a class layout is valid")
}

// SAFETY: every block handed out is either the backing allocator's, for the layout asked (large
// sizes and alignments), or a block of a class at least as large as the layout's size and
// 16-byte aligned, at least as strict as the layout's alignment. A block is on a free list only
// after `dealloc` gave it back, and leaves it before being handed out again. The lists are only
// touched by one thread at a time (the type's contract).
unsafe impl<A: GlobalAlloc> GlobalAlloc for Pool<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout) else {
            // SAFETY: the caller's layout, passed on.
            return unsafe { self.backing.alloc(layout) };
        };
        // SAFETY: one thread uses the pool (see the type); no reference into `free` outlives
        // this call.
        let free = unsafe { &mut *self.free.get() };
        let head = free[class];
        if head.is_null() {
            // SAFETY: a valid, non-zero-sized layout.
            return unsafe { self.backing.alloc(class_layout(class)) };
        }
        // SAFETY: a block on the list is at least 16 bytes, 16-byte aligned, and holds the
        // next block's address in its first word.
        free[class] = unsafe { head.cast::<*mut u8>().read() };
        head
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout) else {
            // SAFETY: the backing allocator gave out this block for this layout.
            return unsafe { self.backing.dealloc(block, layout) };
        };
        // SAFETY: as in `alloc`.
        let free = unsafe { &mut *self.free.get() };
        // SAFETY: the block is the caller's to give back, at least 16 bytes and 16-byte aligned
        // (its class's size and alignment): its first word can hold the link.
        unsafe { block.cast::<*mut u8>().write(free[class]) };
        free[class] = block;
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `GlobalAlloc::realloc`'s contract: the new layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new_layout)) {
            // Still fits the block it has.
            (Some(old), Some(new)) if old == new => block,
            // Both the backing allocator's: it may grow in place.
            // SAFETY: the caller's arguments, passed on.
            (None, None) => unsafe { self.backing.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: a valid layout of non-zero size (`new_size` > 0 by contract).
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks are valid for the smaller of the two sizes and do not
                    // overlap (`moved` is not yet given back, `block` not yet released).
                    unsafe {
                        ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                moved
            }
        }
    }
}

// SAFETY: only on targets with one thread, where nothing can use the pool concurrently.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<A: Sync> Sync for Pool<A> {}

#[cfg(all(
    feature = "allocator",
    target_arch = "wasm32",
    not(target_feature = "atomics")
))]
#[global_allocator]
static ALLOCATOR: Pool<std::alloc::System> = Pool::new(std::alloc::System);

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn sizes_fall_in_the_smallest_class_that_holds_them() {
        assert_eq!(class(layout(1, 1)), Some(0));
        assert_eq!(class(layout(16, 8)), Some(0));
        assert_eq!(class(layout(17, 1)), Some(1));
        assert_eq!(class(layout(1024, 16)), Some(6));
        assert_eq!(class(layout(MAX_SMALL, 4)), Some(CLASSES - 1));
        assert_eq!(class(layout(MAX_SMALL + 1, 4)), None);
        assert_eq!(class(layout(8, 32)), None);
        for c in 0..CLASSES {
            assert_eq!(class(class_layout(c)), Some(c));
        }
    }

    #[test]
    fn a_freed_block_is_given_out_again_for_its_class_only() {
        let pool = Pool::new(System);
        unsafe {
            let a = pool.alloc(layout(24, 8));
            a.write_bytes(0xab, 24);
            pool.dealloc(a, layout(24, 8));
            // Another class does not get it; the same class does, last freed first.
            let other = pool.alloc(layout(8, 8));
            assert_ne!(other, a);
            let again = pool.alloc(layout(32, 16));
            assert_eq!(again, a);
            assert_eq!(again as usize % 16, 0);
            let b = pool.alloc(layout(20, 4));
            assert_ne!(b, a);
            for (p, l) in [
                (other, layout(8, 8)),
                (again, layout(32, 16)),
                (b, layout(20, 4)),
            ] {
                pool.dealloc(p, l);
            }
        }
    }

    #[test]
    fn blocks_in_use_never_overlap_and_keep_their_bytes() {
        let pool = Pool::new(System);
        let sizes = [1usize, 15, 16, 17, 100, 512, 700, 2048, 2049, 5000];
        unsafe {
            let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
            for round in 0..4u8 {
                for (i, &size) in sizes.iter().enumerate() {
                    let l = layout(size, if i % 2 == 0 { 8 } else { 16 });
                    let p = pool.alloc(l);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % l.align(), 0);
                    let fill = round.wrapping_mul(31).wrapping_add(i as u8);
                    p.write_bytes(fill, size);
                    live.push((p, l, fill));
                }
                // Give back every other block, then check the rest kept their bytes.
                let mut kept = Vec::new();
                for (n, (p, l, fill)) in live.drain(..).enumerate() {
                    if n % 2 == 0 {
                        pool.dealloc(p, l);
                    } else {
                        kept.push((p, l, fill));
                    }
                }
                for &(p, l, fill) in &kept {
                    assert!(
                        std::slice::from_raw_parts(p, l.size())
                            .iter()
                            .all(|&b| b == fill)
                    );
                }
                live = kept;
            }
            for (p, l, _) in live {
                pool.dealloc(p, l);
            }
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_to_the_backing_allocator() {
        let pool = Pool::new(System);
        unsafe {
            let mut l = layout(10, 1);
            let mut p = pool.alloc(l);
            for i in 0..10 {
                p.add(i).write(i as u8);
            }
            // Within the class: the same block.
            assert_eq!(pool.realloc(p, l, 16), p);
            l = layout(16, 1);
            // Growing through the classes and past them, then shrinking back.
            for size in [40usize, 300, 2048, 9000, 100_000, 3000, 64, 12] {
                p = pool.realloc(p, l, size);
                assert!(!p.is_null());
                l = layout(size, 1);
                for i in 0..10 {
                    assert_eq!(p.add(i).read(), i as u8, "byte {i} after realloc to {size}");
                }
            }
            pool.dealloc(p, l);
        }
    }

    #[test]
    fn strings_and_vectors_work_over_the_pool() {
        // The pool as a whole allocator, the way `cabi_realloc` and collections use it.
        let pool = Pool::new(System);
        unsafe {
            let l = layout(1, 1);
            let mut p = pool.alloc(l);
            let mut cap = 1;
            let text = b"GET /api/users?limit=5 HTTP/1.1";
            for (len, &byte) in text.iter().enumerate() {
                if len == cap {
                    p = pool.realloc(p, layout(cap, 1), cap * 2);
                    cap *= 2;
                }
                p.add(len).write(byte);
            }
            assert_eq!(std::slice::from_raw_parts(p, text.len()), text);
            pool.dealloc(p, layout(cap, 1));
        }
    }
}
