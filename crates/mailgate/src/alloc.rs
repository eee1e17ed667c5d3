//! The gateway's global allocator. Small, short-lived buffers (the hot path allocates many,
//! on many threads) come from mimalloc; large ones — message contents — from the system
//! allocator with a fixed mmap threshold, so that each is its own mapping: growing it is a
//! remap, not a copy, and freeing it gives the memory back to the OS at once. (mimalloc keeps
//! freed large pages until the thread that owns them allocates again, which after a burst of
//! large messages left hundreds of MiB resident.)

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations from this size on are the system allocator's (and mmapped).
pub const LARGE: usize = 256 << 10;

pub struct GatewayAlloc;

fn large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: every block is freed (and resized) by the allocator that made it: both decide by
// the layout's size, which Rust passes unchanged to `dealloc`, and `realloc` moves a block
// across the threshold by allocating in the other allocator, copying and freeing.
unsafe impl GlobalAlloc for GatewayAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if large(layout.size()) {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if large(layout.size()) {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if large(layout.size()) {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (large(layout.size()), large(new_size)) {
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            (false, false) => unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) },
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
}
