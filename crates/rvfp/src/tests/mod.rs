mod bench;
mod edge;
mod random;
mod zfa;

/// Named bit patterns used by the tables (written out by hand, not computed).
pub(crate) mod consts {
    pub const S_PZ: u32 = 0x0000_0000;
    pub const S_NZ: u32 = 0x8000_0000;
    pub const S_ONE: u32 = 0x3f80_0000;
    pub const S_NEG_ONE: u32 = 0xbf80_0000;
    pub const S_TWO: u32 = 0x4000_0000;
    pub const S_THREE: u32 = 0x4040_0000;
    pub const S_SIX: u32 = 0x40c0_0000;
    pub const S_HALF: u32 = 0x3f00_0000;
    pub const S_2M24: u32 = 0x3380_0000; // 2^-24
    pub const S_2M25: u32 = 0x3300_0000; // 2^-25
    pub const S_INF: u32 = 0x7f80_0000;
    pub const S_NINF: u32 = 0xff80_0000;
    pub const S_CNAN: u32 = 0x7fc0_0000;
    pub const S_QNAN_PAYLOAD: u32 = 0x7fc0_0001;
    pub const S_NQNAN: u32 = 0xffc0_0000;
    pub const S_SNAN: u32 = 0x7f80_0001;
    pub const S_NSNAN: u32 = 0xff80_0001;
    pub const S_MAX: u32 = 0x7f7f_ffff;
    pub const S_NMAX: u32 = 0xff7f_ffff;
    pub const S_MINN: u32 = 0x0080_0000;
    pub const S_MINS: u32 = 0x0000_0001;
    pub const S_MAXS: u32 = 0x007f_ffff;

    pub const D_PZ: u64 = 0;
    pub const D_NZ: u64 = 0x8000_0000_0000_0000;
    pub const D_ONE: u64 = 0x3ff0_0000_0000_0000;
    pub const D_NEG_ONE: u64 = 0xbff0_0000_0000_0000;
    pub const D_TWO: u64 = 0x4000_0000_0000_0000;
    pub const D_THREE: u64 = 0x4008_0000_0000_0000;
    pub const D_SIX: u64 = 0x4018_0000_0000_0000;
    pub const D_HALF: u64 = 0x3fe0_0000_0000_0000;
    pub const D_2M53: u64 = 0x3ca0_0000_0000_0000; // 2^-53
    pub const D_INF: u64 = 0x7ff0_0000_0000_0000;
    pub const D_NINF: u64 = 0xfff0_0000_0000_0000;
    pub const D_CNAN: u64 = 0x7ff8_0000_0000_0000;
    pub const D_QNAN_PAYLOAD: u64 = 0x7ff8_0000_0000_0123;
    pub const D_SNAN: u64 = 0x7ff0_0000_0000_0001;
    pub const D_MAX: u64 = 0x7fef_ffff_ffff_ffff;
    pub const D_NMAX: u64 = 0xffef_ffff_ffff_ffff;
    pub const D_MINN: u64 = 0x0010_0000_0000_0000;
    pub const D_MINS: u64 = 0x0000_0000_0000_0001;
    pub const D_MAXS: u64 = 0x000f_ffff_ffff_ffff;
}
