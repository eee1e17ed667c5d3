//! The gateway's global allocator. Small, short-lived buffers (the hot path allocates many,
//! on many threads) come from mimalloc; large ones — message contents — from the system
//! allocator with a fixed mmap threshold, so that each is its own mapping: growing it is a
//! remap, not a copy, and freeing it gives the memory back to the OS at once. (mimalloc keeps
//! freed large pages until the thread that owns them allocates again, which after a burst of
//! large messages left hundreds of MiB resident.)
//!
//! mimalloc is called through its C functions (`libmimalloc-sys`), not the `mimalloc` crate's
//! allocator: that one asks `mi_malloc_aligned` for every block, and mimalloc 3 serves an
//! aligned request from its fast path only when a free block of the class happens to be there
//! and the class is at most 1 KiB; otherwise it over-allocates (a 24-octet request took a
//! 48-octet class, any request above 1 KiB the generic path). See [`natural`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// Allocations from this size on are the system allocator's (and mmapped).
pub const LARGE: usize = 256 << 10;

pub struct GatewayAlloc;

fn large(size: usize) -> bool {
    size >= LARGE
}

/// The alignment mimalloc's plain `mi_malloc` gives every block of at least that size
/// (`MI_MAX_ALIGN_SIZE`): its size classes are multiples of 8, of 16 from 16 on, and a page's
/// first block is 16-aligned.
const NATURAL: usize = 16;

/// Whether the plain entry points meet `align` for a block of `size`: an alignment up to
/// [`NATURAL`] that the size is a multiple of (every Rust layout's size is a multiple of its
/// alignment, so `align <= size` says it). The test below checks it over every size to 4 KiB.
fn natural(size: usize, align: usize) -> bool {
    align <= NATURAL && align <= size
}

/// A small block from mimalloc.
///
/// # Safety
/// As [`GlobalAlloc::alloc`]; `layout` is not [`large`].
unsafe fn mi_alloc(layout: Layout, zero: bool) -> *mut u8 {
    let (size, align) = (layout.size(), layout.align());
    // SAFETY: mimalloc's allocation functions take any size and a power-of-two alignment.
    unsafe {
        (match (natural(size, align), zero) {
            (true, false) => mi_malloc(size),
            (true, true) => mi_zalloc(size),
            (false, false) => mi_malloc_aligned(size, align),
            (false, true) => mi_zalloc_aligned(size, align),
        }) as *mut u8
    }
}

// SAFETY: every block is freed (and resized) by the allocator that made it: both decide by
// the layout's size, which Rust passes unchanged to `dealloc`, and `realloc` moves a block
// across the threshold by allocating in the other allocator, copying and freeing.
unsafe impl GlobalAlloc for GatewayAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if large(layout.size()) {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { mi_alloc(layout, false) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if large(layout.size()) {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { mi_alloc(layout, true) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if large(layout.size()) {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            // SAFETY: `ptr` came from mimalloc (the layout's size says so).
            unsafe { mi_free(ptr as *mut c_void) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (large(layout.size()), large(new_size)) {
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            // SAFETY: `ptr` came from mimalloc; a block kept in place keeps its address, and
            // so its alignment.
            (false, false) if natural(new_size, layout.align()) => unsafe {
                mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            },
            (false, false) => unsafe { mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8 },
            _ => {
                // SAFETY: the caller guarantees `new_size` with this alignment is a valid layout.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

// mimalloc's option API (in the linked library; the crate declares it only behind a feature
// that would add a dependency for two functions).
unsafe extern "C" {
    fn mi_option_set_default(option: libc::c_int, value: libc::c_long);
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (its default is 1000 ms; the test
/// below checks that this index has that default).
const MI_OPTION_PURGE_DELAY: libc::c_int = 15;

/// How long mimalloc keeps freed pages before giving them back to the OS. Under load the
/// default (1 s) gave back and faulted in again (zeroing, often whole huge pages) about one
/// page per four messages; 10 s cut the gateway's page faults fivefold (BENCHMARKS.md,
/// session 12). The cost: after a burst, memory goes back 10 s later instead of 1 s.
const PURGE_DELAY_MS: libc::c_long = 10_000;

/// Fixes glibc's mmap threshold at [`LARGE`] (by default it rises after the first large free,
/// and large blocks then stay in the heap) and mimalloc's purge delay (unless the operator set
/// `MIMALLOC_PURGE_DELAY`). Call once at the start of `main`.
pub fn init() {
    // SAFETY: mallopt only sets a malloc parameter; mi_option_set_default only sets an option
    // that the environment has not set.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE as libc::c_int);
        mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" {
        fn mi_option_get(option: libc::c_int) -> libc::c_long;
    }

    #[test]
    fn the_purge_delay_index_is_mimallocs() {
        // SAFETY: reading an option.
        let default = unsafe { mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert!(default == 1000 || default == super::PURGE_DELAY_MS, "option 15 is not purge_delay: {default}");
        super::init();
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reading an option.
            assert_eq!(unsafe { mi_option_get(super::MI_OPTION_PURGE_DELAY) }, super::PURGE_DELAY_MS);
        }
    }

    /// Every block of every size up to 4 KiB and every alignment up to 64 (the plain path for
    /// those [`natural`] admits, the aligned one for the rest; also sizes that are not a
    /// multiple of the alignment, which a `Layout` may have) is aligned, through allocation,
    /// zeroed allocation and growth or shrinking in place or by moving. Hundreds of blocks are
    /// alive at once, so that they come from many places in many pages.
    #[test]
    fn every_block_is_aligned() {
        let mut live = vec![];
        for size in 1..=4096usize {
            for align in [1, 2, 4, 8, 16, 32, 64] {
                let layout = Layout::from_size_align(size, align).expect("a layout");
                // SAFETY: a non-zero size; every block is freed with its layout below.
                unsafe {
                    let p = GatewayAlloc.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "{size} octets, aligned {align}: {p:?}"
                    );
                    let z = GatewayAlloc.alloc_zeroed(layout);
                    assert!(
                        !z.is_null() && (z as usize).is_multiple_of(align),
                        "{size} zeroed, aligned {align}: {z:?}"
                    );
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let new_size = if size % 3 == 0 { size / 2 / align * align } else { size * 3 };
                    let new_size = new_size.max(align);
                    let r = GatewayAlloc.realloc(p, layout, new_size);
                    assert!(
                        !r.is_null() && (r as usize).is_multiple_of(align),
                        "{size} → {new_size}, aligned {align}: {r:?}"
                    );
                    live.push((z, layout));
                    live.push((r, Layout::from_size_align(new_size, align).expect("a layout")));
                }
            }
            if live.len() > 600 {
                for (p, layout) in live.drain(..) {
                    // SAFETY: allocated above with this layout.
                    unsafe { GatewayAlloc.dealloc(p, layout) };
                }
            }
        }
        for (p, layout) in live {
            // SAFETY: allocated above with this layout.
            unsafe { GatewayAlloc.dealloc(p, layout) };
        }
    }
}
