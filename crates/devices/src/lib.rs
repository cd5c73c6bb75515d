//! Devices shared by every accelerator. Each knows only the machine core's contracts: a
//! [`vireo_machine::BusDevice`] window, an [`vireo_machine::IrqLine`] output, and the
//! [`vireo_machine::ExitSignal`] for devices that stop the guest.

pub mod finisher;
pub mod rtc;
pub mod serial;
pub mod vmgenid;

pub use finisher::TestFinisher;
pub use rtc::GoldfishRtc;
pub use serial::{ConsoleOutput, Uart, UartState};
pub use vmgenid::VmGenId;
