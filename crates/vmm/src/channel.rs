//! The command channel between the host and vireo's /init: four virtio-serial ports the guest
//! finds by name (`crates/image/src/init.sh` is the guest's half, and its header the protocol):
//!
//! | port | direction | carries |
//! |---|---|---|
//! | `vireo.stdin` | host → guest | the command's stdin; its end closes the port |
//! | `vireo.stdout` | guest → host | the command's stdout |
//! | `vireo.stderr` | guest → host | the command's stderr |
//! | `vireo.ctl` | both | host: `winsize ROWS COLS`, `poweroff`, `exec SCRIPT`, `signal N`, `generation [nics]` (after a restore of a VM with NICs: report the address, with `nics` bind them again first); guest: `started` before the command runs, `ip ADDR`, `exited STATUS` |

use vireo_virtio::serial::{Serial, SerialPort};

/// Port names, in port-id order.
pub const PORTS: [&str; 4] = ["vireo.stdin", "vireo.stdout", "vireo.stderr", "vireo.ctl"];

/// The host ends of the four ports.
#[derive(Clone)]
pub struct Channel {
    pub stdin: SerialPort,
    pub stdout: SerialPort,
    pub stderr: SerialPort,
    pub ctl: SerialPort,
}

/// The virtio-serial device for a guest, and the host's ends of its ports.
pub fn channel() -> (Serial, Channel) {
    // The names are constants that satisfy Serial's rules.
    let dev = Serial::new(&PORTS).expect("vireo's port names are valid");
    let port = |n: &str| dev.port(n).expect("port exists");
    let ch = Channel {
        stdin: port(PORTS[0]),
        stdout: port(PORTS[1]),
        stderr: port(PORTS[2]),
        ctl: port(PORTS[3]),
    };
    (dev, ch)
}
