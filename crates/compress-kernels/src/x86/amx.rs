//! Intel AMX (Advanced Matrix Extensions) bf16 tile multiply: the micro-kernel of
//! [`crate::dense`]'s bf16 products.
//!
//! AMX adds eight 1 KiB tile registers (`tmm0`–`tmm7`, 16 rows × 64 bytes) and `tdpbf16ps`,
//! which multiplies a 16 × 32 bf16 tile by a 32 × 16 bf16 tile (stored as 16 rows of 16 bf16
//! *pairs*, the "VNNI" layout) into a 16 × 16 f32 tile: 16,384 flops per instruction with
//! f32 accumulation. rustc 1.95 has the AMX intrinsics behind an unstable feature, so the
//! instructions are written with stable `asm!` and registers named in the template.
//!
//! Linux hands out the tile state only to processes that ask (`arch_prctl(ARCH_REQ_XCOMP_PERM,
//! XFEATURE_XTILEDATA)`, Linux ≥ 5.16); [`available`] checks the CPU (CPUID), the OS (XCR0) and
//! asks once per process. Each thread loads the tile configuration ([`TileConfig::load`])
//! before its first tile instruction and releases the state when done.

use std::arch::asm;
use std::arch::x86_64::{__cpuid, __cpuid_count};
use std::sync::OnceLock;

/// One tile's worth of bf16 values (16 rows × 32 bf16 = 1 KiB), cache-line aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub struct Tile(pub [u16; 512]);

impl Tile {
    /// A tile of zeros (bf16 +0).
    pub const ZERO: Tile = Tile([0; 512]);
}

/// Whether this process may run AMX bf16 instructions: the CPU has AMX-TILE and AMX-BF16, the
/// OS saves tile state (XCR0 bits 17–18), and Linux granted the tile-data permission. Checked
/// (and the permission requested) once per process; never panics.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| cpu_and_os_support() && request_permission())
}

fn cpu_and_os_support() -> bool {
    // SAFETY: CPUID is available on every x86-64 CPU; XGETBV only after OSXSAVE is confirmed.
    unsafe {
        if __cpuid(0).eax < 0xD || (__cpuid(1).ecx >> 27) & 1 == 0 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        let (amx_bf16, amx_tile) = ((edx >> 22) & 1 == 1, (edx >> 24) & 1 == 1);
        let (lo, _hi): (u32, u32);
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi,
             options(nomem, nostack, preserves_flags));
        amx_bf16 && amx_tile && (lo >> 17) & 0b11 == 0b11
    }
}

/// `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, then `ARCH_GET_XCOMP_PERM` to check
/// the grant. Non-Linux systems: `false`.
fn request_permission() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: usize = 158;
        const ARCH_GET_XCOMP_PERM: usize = 0x1022;
        const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
        const XFEATURE_XTILEDATA: usize = 18;
        let syscall2 = |a: usize, b: usize| -> isize {
            let ret: isize;
            // SAFETY: a plain Linux syscall with two integer/pointer arguments; the kernel
            // clobbers rcx and r11.
            unsafe {
                asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL as isize => ret,
                     in("rdi") a, in("rsi") b, lateout("rcx") _, lateout("r11") _,
                     options(nostack));
            }
            ret
        };
        if syscall2(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0 {
            return false;
        }
        let mut mask: u64 = 0;
        if syscall2(ARCH_GET_XCOMP_PERM, &mut mask as *mut u64 as usize) != 0 {
            return false;
        }
        (mask >> XFEATURE_XTILEDATA) & 1 == 1
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The `ldtilecfg` operand: palette 1, all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    _reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    _reserved: [0; 14],
    bytes_per_row: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// The calling thread's tile state, configured for [`block_32x32`] while it lives and released
/// when dropped.
pub struct TileScope(());

impl TileScope {
    /// Configures the calling thread's tiles.
    ///
    /// # Safety
    /// [`available`] must have returned `true`.
    pub unsafe fn new() -> Self {
        // SAFETY: AMX is available and permitted (caller); the operand is a valid config.
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig,
                 options(nostack, readonly, preserves_flags));
        }
        TileScope(())
    }
}

impl Drop for TileScope {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `new` on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// `C[32 × 32] += A · B` (or `C = A · B` when `accumulate` is false) over `k_tiles ≥ 1` steps
/// of 32: `a0`/`a1` point at the first 16 × 32 bf16 tiles of rows 0–15 and 16–31 of `A`,
/// `b0`/`b1` at the first VNNI tiles of columns 0–15 and 16–31 of `B`; each next step's tiles
/// follow 1 KiB later. `c` is f32 with rows `ldc_bytes` apart.
///
/// # Safety
/// A [`TileScope`] must be live on this thread; every pointer must be valid for the tiles and
/// the 32 × 32 block read and written.
#[inline]
#[allow(clippy::too_many_arguments)]
pub unsafe fn block_32x32(
    _scope: &TileScope,
    a0: *const Tile,
    a1: *const Tile,
    b0: *const Tile,
    b1: *const Tile,
    k_tiles: usize,
    c: *mut f32,
    ldc_bytes: usize,
    accumulate: bool,
) {
    debug_assert!(k_tiles >= 1);
    let c_lo = c as *mut u8;
    let c_hi = c_lo.wrapping_add(16 * ldc_bytes);
    // SAFETY: the caller's contract; tmm0–3 accumulate, tmm4–5 hold A, tmm6–7 hold B. The tile
    // registers keep their contents between the asm blocks (the compiler never uses them).
    unsafe {
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c_lo} + {ldc}*1]",
                "tileloadd tmm1, [{c_lo} + {ldc}*1 + 64]",
                "tileloadd tmm2, [{c_hi} + {ldc}*1]",
                "tileloadd tmm3, [{c_hi} + {ldc}*1 + 64]",
                c_lo = in(reg) c_lo,
                c_hi = in(reg) c_hi,
                ldc = in(reg) ldc_bytes,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem),
            );
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {row}*1]",
            "tileloadd tmm6, [{b0} + {row}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {row}*1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {row}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {k}",
            "jnz 2b",
            "tilestored [{c_lo} + {ldc}*1], tmm0",
            "tilestored [{c_lo} + {ldc}*1 + 64], tmm1",
            "tilestored [{c_hi} + {ldc}*1], tmm2",
            "tilestored [{c_hi} + {ldc}*1 + 64], tmm3",
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            k = inout(reg) k_tiles => _,
            c_lo = in(reg) c_lo,
            c_hi = in(reg) c_hi,
            ldc = in(reg) ldc_bytes,
            row = in(reg) 64usize,
            options(nostack),
        );
    }
}
