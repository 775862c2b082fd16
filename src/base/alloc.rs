//! The process's allocator: mimalloc, asked the way its fast path answers.
//!
//! The `mimalloc` crate hands every request to `mi_malloc_aligned`. mimalloc 3 serves
//! that from its free lists only when the size is at most 1 KiB and the next free block
//! happens to sit on the alignment, or when the size rounds to a power of two; anything
//! else (a boxed 4 KiB request future, a 48-byte value that wants 16) is over-allocated
//! by `alignment - 1` bytes and aligned by hand. Under pass-through load that was 5 of
//! 15 allocations per request and ~2,000 instructions (callgrind, `benches/callgrind.sh`).
//!
//! mimalloc's plain `mi_malloc` already returns blocks aligned to 16 when they are at
//! least 16 bytes (its size classes are multiples of 16 above 16 and pages start on 16),
//! and to 8 below — the guarantee C's `malloc` makes, which Rust's own `System`
//! allocator relies on in the same way. So a layout whose alignment is at most 16 and
//! at most its size takes the plain calls; any other keeps the aligned ones.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What `mi_malloc` guarantees: `max_align_t` on x86-64 and aarch64 Linux.
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator (see the module docs for why not `mimalloc::MiMalloc`).
pub struct Allocator;

fn plain(layout: &Layout) -> bool {
    layout.align() <= PLAIN_ALIGN && layout.align() <= layout.size()
}

// SAFETY: every block comes from mimalloc and goes back to it through `mi_free`, which
// takes blocks of the plain and the aligned calls alike; a plain call is used only where
// mimalloc's own guarantee covers the layout's alignment (module docs; tested below).
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: FFI calls with a size and a power-of-two alignment from a `Layout`.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of the calls above (the `GlobalAlloc` contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let ptr = ptr.cast::<c_void>();
        // SAFETY: `ptr` came from this allocator with `layout`; the new block keeps its
        // alignment by the same rule as `alloc` applied to the new size.
        unsafe {
            if layout.align() <= PLAIN_ALIGN && layout.align() <= new_size {
                mi::mi_realloc(ptr, new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr, new_size, layout.align()).cast()
            }
        }
    }
}

/// A value boxed where it is made: `Box::pin(make())` builds the value on the stack and
/// copies it into the box (the whole size of its type: a request's future is kilobytes,
/// even before it first runs), where this allocates first and has `make` write straight
/// into the box. On the fan-out, `memcpy` went from 5.1 to 4.1 % of the gateway's time
/// (docs/operations.md, "Third look").
#[inline(always)]
pub fn pin_in_place<T>(make: impl FnOnce() -> T) -> std::pin::Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size a request meets (and the odd ones between) at every alignment up to
    /// a page: the block is aligned, writable to its end, and survives growing.
    #[test]
    fn blocks_are_aligned_and_whole() {
        let a = Allocator;
        let sizes = (1..=300).chain([1000, 1024, 1025, 4096, 4240, 7192, 65_536, 1 << 20]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                let mut held = Vec::new();
                // Several at once, so blocks past a page's first are checked too.
                for _ in 0..8 {
                    // SAFETY: a non-zero size; the block is freed below with its layout.
                    let p = unsafe { a.alloc(layout) };
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    // SAFETY: the block is `size` bytes long.
                    unsafe { p.write_bytes(0xa5, size) };
                    held.push(p);
                }
                for p in held {
                    // SAFETY: from `alloc` above, grown with the same alignment.
                    let q = unsafe { a.realloc(p, layout, size * 2 + 7) };
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "grown size {size} align {align}");
                    // SAFETY: realloc keeps the first `size` bytes.
                    assert_eq!(unsafe { *q.add(size - 1) }, 0xa5);
                    let grown = Layout::from_size_align(size * 2 + 7, align).expect("layout");
                    // SAFETY: the block of `realloc`, with its new layout.
                    unsafe { a.dealloc(q, grown) };
                }
                // SAFETY: as above; zeroed blocks read as zero.
                let z = unsafe { a.alloc_zeroed(layout) };
                assert_eq!(z as usize % align, 0);
                assert!((0..size).all(|i| unsafe { *z.add(i) } == 0));
                // SAFETY: from `alloc_zeroed` with this layout.
                unsafe { a.dealloc(z, layout) };
            }
        }
    }
}
