//! The Goldfish RTC (Android emulator lineage, `google,goldfish-rtc`): wall-clock time in
//! nanoseconds as two 32-bit registers; reading the low half latches the high half so the pair
//! is consistent. Alarms are accepted and ignored: Linux reads the time at boot and keeps its own.

use std::time::{SystemTime, UNIX_EPOCH};

use vireo_machine::bus::set_le_value;
use vireo_machine::BusDevice;

const TIME_LOW: u64 = 0x00;
const TIME_HIGH: u64 = 0x04;

/// Size of the register window.
pub const RTC_WINDOW: u64 = 0x1000;

#[derive(Default)]
pub struct GoldfishRtc {
    latched_high: u32,
}

impl GoldfishRtc {
    pub fn new() -> Self {
        Self::default()
    }

    /// The high half latched by the last low-half read (a snapshot keeps it: a guest may
    /// be between its two reads).
    pub fn latched(&self) -> u32 {
        self.latched_high
    }

    pub fn set_latched(&mut self, v: u32) {
        self.latched_high = v;
    }

    fn now_ns() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

impl BusDevice for GoldfishRtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = match offset {
            TIME_LOW => {
                let t = Self::now_ns();
                self.latched_high = (t >> 32) as u32;
                t as u32
            }
            TIME_HIGH => self.latched_high,
            _ => 0,
        };
        set_le_value(data, u64::from(v));
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_now() {
        let mut r = GoldfishRtc::new();
        let mut lo = [0u8; 4];
        let mut hi = [0u8; 4];
        r.read(TIME_LOW, &mut lo);
        r.read(TIME_HIGH, &mut hi);
        let t = (u64::from(u32::from_le_bytes(hi)) << 32) | u64::from(u32::from_le_bytes(lo));
        let now = GoldfishRtc::now_ns();
        assert!(now >= t && now - t < 5_000_000_000, "{t} vs {now}");
        assert!(t > 1_600_000_000 * 1_000_000_000);
    }
}
