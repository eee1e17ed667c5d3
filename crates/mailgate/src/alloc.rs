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

/// Fixes glibc's mmap threshold at [`LARGE`] (by default it rises after the first large free,
/// and large blocks then stay in the heap). Call once at the start of `main`.
pub fn init() {
    // SAFETY: mallopt only sets a malloc parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE as libc::c_int);
    }
}
