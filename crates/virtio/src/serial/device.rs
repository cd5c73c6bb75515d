//! What the guest sees of virtio-serial: the queues, the configuration space and the control
//! messages the driver sends.

use std::io::Read;
use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT, Reader};

use super::port::{control_message, Active, Port, Shared};
use super::{
    event, port_queues, queue_port, SerialError, SerialPort, CONTROL_RX, CONTROL_TX, F_MULTIPORT,
    MAX_NAME, MAX_PORTS, QUEUE_SIZE,
};
use crate::{types, ActivateError, Activation, VirtioDevice, F_VERSION_1};

/// A virtio-console device with named generic ports.
pub struct Serial {
    pub(crate) shared: Arc<Shared>,
    queue_sizes: Vec<u16>,
    config: [u8; 12],
}

impl Serial {
    /// A device with one port per name, port `i` having id `i`.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self, SerialError> {
        if names.is_empty() || names.len() > MAX_PORTS {
            return Err(SerialError::PortCount { count: names.len() });
        }
        let mut ports: Vec<Port> = Vec::with_capacity(names.len());
        for n in names {
            let n = n.as_ref();
            if n.is_empty() || n.len() > MAX_NAME || !n.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(SerialError::BadName { name: n.into() });
            }
            if ports.iter().any(|p| p.name == n) {
                return Err(SerialError::DuplicateName { name: n.into() });
            }
            ports.push(Port::new(n.to_string()));
        }
        let count = ports.len();
        let shared = Arc::new(Shared::default());
        shared.lock().ports = ports;
        let mut config = [0u8; 12];
        config[4..8].copy_from_slice(&(count as u32).to_le_bytes());
        Ok(Serial {
            shared,
            queue_sizes: vec![QUEUE_SIZE; 2 * (count + 1)],
            config,
        })
    }

    /// The host end of port `name`.
    pub fn port(&self, name: &str) -> Option<SerialPort> {
        let index = self
            .shared
            .lock()
            .ports
            .iter()
            .position(|p| p.name == name)?;
        Some(SerialPort {
            shared: self.shared.clone(),
            index,
        })
    }

    /// Reads the driver's control messages and acts on them.
    fn process_control(&mut self) {
        let mut st = self.shared.lock();
        let mut messages = Vec::new();
        {
            let Some(Active {
                mem,
                interrupt,
                control_tx: Some(queue),
                ..
            }) = st.active.as_mut()
            else {
                return;
            };
            let mut used_any = false;
            for _ in 0..queue.size() {
                let Ok(Some(chain)) = queue.iter(&*mem).map(|mut chains| chains.next()) else {
                    break;
                };
                let head = chain.head_index();
                let mut header = [0u8; 8];
                if let Ok(mut r) = Reader::new(&*mem, chain) {
                    if r.read_exact(&mut header).is_ok() {
                        messages.push(header);
                    }
                }
                used_any |= queue.add_used(&*mem, head, 0).is_ok();
            }
            if used_any {
                interrupt.notify_used(CONTROL_TX as u16, queue, mem);
            }
        }
        for m in messages {
            let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
            let ev = u16::from_le_bytes([m[4], m[5]]);
            let value = u16::from_le_bytes([m[6], m[7]]);
            let port = usize::try_from(id).ok().filter(|&p| p < st.ports.len());
            match (ev, port) {
                (event::DEVICE_READY, _) if value == 1 => {
                    for p in 0..st.ports.len() {
                        let msg = control_message(p as u32, event::DEVICE_ADD, 0, &[]);
                        st.queue_control(msg);
                    }
                }
                (event::PORT_READY, Some(p)) if value == 1 => {
                    let name = st.ports[p].name.clone();
                    st.queue_control(control_message(id, event::PORT_NAME, 0, name.as_bytes()));
                    st.ports[p].ready = true;
                    // Ends of input already closed and drained are never opened.
                    let open = st.ports[p].host_open();
                    st.ports[p].host_open_sent = open;
                    if open {
                        st.queue_control(control_message(id, event::PORT_OPEN, 1, &[]));
                    }
                }
                (event::PORT_OPEN, Some(p)) => st.ports[p].guest_open = value != 0,
                // A port the driver failed to set up, events for ports that do not exist, and
                // events a driver does not send are ignored.
                _ => {}
            }
        }
        st.pump();
        drop(st);
        self.shared.changed.notify_all();
    }
}

impl VirtioDevice for Serial {
    fn device_type(&self) -> u32 {
        types::CONSOLE
    }

    fn features(&self) -> u64 {
        F_VERSION_1 | F_MULTIPORT
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut act: Activation) -> Result<(), ActivateError> {
        if act.features & F_MULTIPORT == 0 {
            return Err(ActivateError::Backend(
                "virtio-serial: the driver did not accept VIRTIO_CONSOLE_F_MULTIPORT".into(),
            ));
        }
        let control_rx = act.take_queue(CONTROL_RX, "control receiveq")?;
        let control_tx = act.take_queue(CONTROL_TX, "control transmitq")?;
        let mut st = self.shared.lock();
        for p in 0..st.ports.len() {
            let (rx, tx) = port_queues(p);
            // A port whose queues the driver left disabled is simply never usable.
            st.ports[p].rx = act.queues.get_mut(rx).and_then(Option::take);
            st.ports[p].tx = act.queues.get_mut(tx).and_then(Option::take);
        }
        st.active = Some(Active {
            mem: act.mem,
            interrupt: act.interrupt,
            control_rx: Some(control_rx),
            control_tx: Some(control_tx),
        });
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        match usize::from(index) {
            CONTROL_TX => self.process_control(),
            CONTROL_RX => self.shared.lock().flush_control(),
            q if queue_port(q).is_some() => {
                self.shared.lock().pump();
                self.shared.changed.notify_all();
            }
            _ => {}
        }
    }

    fn pause(&self, _timeout: std::time::Duration) -> bool {
        // Every delivery runs under this lock, so once it is ours none is in progress.
        self.shared.lock().paused = true;
        true
    }

    fn resume(&self) {
        let mut st = self.shared.lock();
        st.paused = false;
        st.pump();
        drop(st);
        self.shared.changed.notify_all();
    }

    /// What the driver was told and told us about each port, and the control messages it has
    /// not received yet. Bytes in flight between the host and the ports belong to the host
    /// end, which a restore replaces.
    fn save_state(&self) -> Vec<u8> {
        let st = self.shared.lock();
        let saved = SavedSerial {
            ports: st
                .ports
                .iter()
                .map(|p| SavedPort {
                    name: p.name.clone(),
                    ready: p.ready,
                    guest_open: p.guest_open,
                    host_open_sent: p.host_open_sent,
                })
                .collect(),
            control: st.control.iter().cloned().collect(),
        };
        postcard::to_stdvec(&saved).unwrap_or_default()
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), String> {
        let saved: SavedSerial = postcard::from_bytes(state)
            .map_err(|e| format!("virtio-serial: cannot decode the saved state: {e}"))?;
        let mut st = self.shared.lock();
        let names: Vec<&str> = st.ports.iter().map(|p| p.name.as_str()).collect();
        let saved_names: Vec<&str> = saved.ports.iter().map(|p| p.name.as_str()).collect();
        if names != saved_names {
            return Err(format!(
                "virtio-serial: the snapshot has ports {saved_names:?}, the definition {names:?}"
            ));
        }
        if saved.control.len() > super::CONTROL_PENDING_MAX {
            return Err(format!(
                "virtio-serial: {} pending control messages saved, at most {} are kept",
                saved.control.len(),
                super::CONTROL_PENDING_MAX
            ));
        }
        for (p, s) in st.ports.iter_mut().zip(&saved.ports) {
            p.ready = s.ready;
            p.guest_open = s.guest_open;
            p.host_open_sent = s.host_open_sent;
        }
        st.control = saved.control.into();
        Ok(())
    }

    fn reset(&mut self) {
        let mut st = self.shared.lock();
        st.active = None;
        st.control.clear();
        for p in &mut st.ports {
            p.rx = None;
            p.tx = None;
            p.ready = false;
            p.guest_open = false;
            p.host_open_sent = false;
        }
        drop(st);
        self.shared.changed.notify_all();
    }
}

/// [`Serial`]'s own state in a snapshot (postcard, like every section).
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedSerial {
    ports: Vec<SavedPort>,
    control: Vec<Vec<u8>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPort {
    name: String,
    ready: bool,
    guest_open: bool,
    host_open_sent: bool,
}
