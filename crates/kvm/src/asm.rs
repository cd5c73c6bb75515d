//! A tiny x86 encoder for micro-guests: the handful of instructions vireo's probe guest, tests
//! and bench need, each emitted from its opcode bytes (Intel SDM vol. 2 encodings, noted per
//! method). Jumps are 8-bit relative; labels may be used before they are bound.

/// Which code size the bytes are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 16-bit real mode (operand and address size 16).
    Real,
    /// 64-bit long mode (default operand size 32, address size 64).
    Long,
}

/// A base register for [`Asm::load_esi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    Ebx = 3,
    Esi = 6,
}

/// A position in the code, bound now or later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Errors when finishing the code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AsmError {
    /// A jump refers to a label that was never bound.
    #[error("label {0} used but never bound")]
    Unbound(usize),
    /// A jump's target is further than an 8-bit displacement reaches.
    #[error("jump at offset {at:#x} cannot reach its target ({distance} bytes away)")]
    OutOfRange { at: usize, distance: i64 },
}

/// Machine code under construction. Label addresses are `origin + offset`: the linear address
/// in long mode, the offset in the code segment in real mode.
pub struct Asm {
    mode: Mode,
    origin: u64,
    code: Vec<u8>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
    abs_fixups: Vec<(usize, Label)>,
}

impl Asm {
    pub fn new(mode: Mode, origin: u64) -> Self {
        Asm {
            mode,
            origin,
            code: Vec::new(),
            labels: Vec::new(),
            fixups: Vec::new(),
            abs_fixups: Vec::new(),
        }
    }

    /// Address of the next byte emitted.
    pub fn here(&self) -> u64 {
        self.origin + self.code.len() as u64
    }

    /// A label not yet bound.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `l` to the next byte emitted.
    pub fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.code.len());
    }

    /// Address a bound label stands for (None before it is bound).
    pub fn addr_of(&self, l: Label) -> Option<u64> {
        self.labels[l.0].map(|o| self.origin + o as u64)
    }

    /// Raw bytes (data, or an instruction this encoder lacks).
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.code.extend_from_slice(b);
        self
    }

    /// Pads with zero bytes up to `origin + offset`.
    pub fn pad_to(&mut self, offset: usize) -> &mut Self {
        if self.code.len() < offset {
            self.code.resize(offset, 0);
        }
        self
    }

    fn op16_prefix(&mut self) {
        // The operand-size prefix 0x66 selects 16 bits in long mode.
        if self.mode == Mode::Long {
            self.code.push(0x66);
        }
    }

    fn op32_prefix(&mut self) {
        // ... and 32 bits in real mode.
        if self.mode == Mode::Real {
            self.code.push(0x66);
        }
    }

    /// `mov dx, imm16` (B8+r iw, r = 2).
    pub fn mov_dx(&mut self, v: u16) -> &mut Self {
        self.op16_prefix();
        self.code.push(0xba);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// `mov al, imm8` (B0+r ib).
    pub fn mov_al(&mut self, v: u8) -> &mut Self {
        self.bytes(&[0xb0, v])
    }

    /// `mov eax, imm32` (B8+r id).
    pub fn mov_eax(&mut self, v: u32) -> &mut Self {
        self.op32_prefix();
        self.code.push(0xb8);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// `mov ebx, imm32` (B8+r id, r = 3); zero-extends into rbx in long mode.
    pub fn mov_ebx(&mut self, v: u32) -> &mut Self {
        self.op32_prefix();
        self.code.push(0xbb);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// `mov esi, imm32` in long mode, `mov si, imm16` in real mode (B8+r, r = 6).
    pub fn mov_si(&mut self, v: u32) -> &mut Self {
        self.code.push(0xbe);
        match self.mode {
            Mode::Long => self.code.extend_from_slice(&v.to_le_bytes()),
            Mode::Real => self.code.extend_from_slice(&(v as u16).to_le_bytes()),
        }
        self
    }

    /// `mov eax, edi` (89 /r, ModRM 0xf8: mod 11, reg edi, rm eax).
    pub fn mov_eax_edi(&mut self) -> &mut Self {
        self.op32_prefix();
        self.bytes(&[0x89, 0xf8])
    }

    /// `mov ax, cs; mov ds, ax` (8C /r with ModRM 0xc8, 8E /r with ModRM 0xd8): real mode data
    /// relative to the code segment.
    pub fn mov_ds_cs(&mut self) -> &mut Self {
        self.bytes(&[0x8c, 0xc8, 0x8e, 0xd8])
    }

    /// `add al, imm8` (04 ib).
    pub fn add_al(&mut self, v: u8) -> &mut Self {
        self.bytes(&[0x04, v])
    }

    /// `and al, imm8` (24 ib).
    pub fn and_al(&mut self, v: u8) -> &mut Self {
        self.bytes(&[0x24, v])
    }

    /// `dec eax` (FF /1, ModRM 0xc8; the one-byte 48 is a REX prefix in long mode).
    pub fn dec_eax(&mut self) -> &mut Self {
        self.op32_prefix();
        self.bytes(&[0xff, 0xc8])
    }

    /// `cmp al, imm8` (3C ib).
    pub fn cmp_al(&mut self, v: u8) -> &mut Self {
        self.bytes(&[0x3c, v])
    }

    /// `cmp eax, imm8` sign-extended (83 /7 ib, ModRM 0xf8).
    pub fn cmp_eax_imm8(&mut self, v: i8) -> &mut Self {
        self.op32_prefix();
        self.bytes(&[0x83, 0xf8, v as u8])
    }

    /// `shr eax, imm8` (C1 /5 ib, ModRM 0xe8).
    pub fn shr_eax(&mut self, n: u8) -> &mut Self {
        self.op32_prefix();
        self.bytes(&[0xc1, 0xe8, n])
    }

    /// `test al, al` (84 /r, ModRM 0xc0).
    pub fn test_al_al(&mut self) -> &mut Self {
        self.bytes(&[0x84, 0xc0])
    }

    /// `test edi, edi` (85 /r, ModRM 0xff).
    pub fn test_edi_edi(&mut self) -> &mut Self {
        self.op32_prefix();
        self.bytes(&[0x85, 0xff])
    }

    /// `out dx, al` (EE).
    pub fn out_dx_al(&mut self) -> &mut Self {
        self.bytes(&[0xee])
    }

    /// `out imm8, al` (E6 ib).
    pub fn out_imm_al(&mut self, port: u8) -> &mut Self {
        self.bytes(&[0xe6, port])
    }

    /// `in al, dx` (EC).
    pub fn in_al_dx(&mut self) -> &mut Self {
        self.bytes(&[0xec])
    }

    /// 32/64-bit code: `mov esi, dword [base + disp32]` (8B /r, ModRM mod 10, reg esi). Also
    /// valid in 32-bit protected mode, where the PVH entry runs.
    pub fn load_esi(&mut self, base: Base, disp: u32) -> &mut Self {
        self.code
            .extend_from_slice(&[0x8b, 0x80 | (6 << 3) | base as u8]);
        self.code.extend_from_slice(&disp.to_le_bytes());
        self
    }

    /// `lodsb` (AC): al = [si], si += 1.
    pub fn lodsb(&mut self) -> &mut Self {
        self.bytes(&[0xac])
    }

    /// Long mode: `mov dword [rbx], imm32` (C7 /0 id, ModRM 0x03).
    pub fn store32_at_rbx(&mut self, v: u32) -> &mut Self {
        self.code.extend_from_slice(&[0xc7, 0x03]);
        self.code.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// Long mode: `mov eax, dword [rbx]` (8B /r, ModRM 0x03).
    pub fn load32_from_rbx(&mut self) -> &mut Self {
        self.bytes(&[0x8b, 0x03])
    }

    /// Long mode: `lock inc dword [disp32]` (F0 FF /0 with ModRM 0x04, SIB 0x25: no base, no
    /// index). Real mode: `lock inc word [disp16]` (F0 FF /0 with ModRM 0x06).
    pub fn lock_inc_mem(&mut self, addr: u32) -> &mut Self {
        match self.mode {
            Mode::Long => {
                self.code.extend_from_slice(&[0xf0, 0xff, 0x04, 0x25]);
                self.code.extend_from_slice(&addr.to_le_bytes());
            }
            Mode::Real => {
                self.code.extend_from_slice(&[0xf0, 0xff, 0x06]);
                self.code.extend_from_slice(&(addr as u16).to_le_bytes());
            }
        }
        self
    }

    /// Long mode: `cmp dword [disp32], imm8` (83 /7 ib, ModRM 0x3c, SIB 0x25).
    pub fn cmp_mem32_imm8(&mut self, addr: u32, v: i8) -> &mut Self {
        self.code.extend_from_slice(&[0x83, 0x3c, 0x25]);
        self.code.extend_from_slice(&addr.to_le_bytes());
        self.code.push(v as u8);
        self
    }

    /// Long mode: `lidt [disp32]` (0F 01 /3, ModRM 0x1c, SIB 0x25).
    pub fn lidt_abs(&mut self, addr: u32) -> &mut Self {
        self.code.extend_from_slice(&[0x0f, 0x01, 0x1c, 0x25]);
        self.code.extend_from_slice(&addr.to_le_bytes());
        self
    }

    /// `int3` (CC).
    pub fn int3(&mut self) -> &mut Self {
        self.bytes(&[0xcc])
    }

    /// `iretq` (REX.W CF).
    pub fn iretq(&mut self) -> &mut Self {
        self.bytes(&[0x48, 0xcf])
    }

    /// `cli` (FA).
    pub fn cli(&mut self) -> &mut Self {
        self.bytes(&[0xfa])
    }

    /// `sti` (FB).
    pub fn sti(&mut self) -> &mut Self {
        self.bytes(&[0xfb])
    }

    /// `hlt` (F4).
    pub fn hlt(&mut self) -> &mut Self {
        self.bytes(&[0xf4])
    }

    /// `pause` (F3 90).
    pub fn pause(&mut self) -> &mut Self {
        self.bytes(&[0xf3, 0x90])
    }

    fn jump(&mut self, opcode: u8, target: Label) -> &mut Self {
        self.code.extend_from_slice(&[opcode, 0]);
        self.fixups.push((self.code.len() - 1, target));
        self
    }

    /// `jmp rel8` (EB cb).
    pub fn jmp(&mut self, target: Label) -> &mut Self {
        self.jump(0xeb, target)
    }

    /// `jz rel8` (74 cb).
    pub fn jz(&mut self, target: Label) -> &mut Self {
        self.jump(0x74, target)
    }

    /// `jnz rel8` (75 cb).
    pub fn jnz(&mut self, target: Label) -> &mut Self {
        self.jump(0x75, target)
    }

    /// `jmp $` (EB FE): spin forever without leaving the guest.
    pub fn spin(&mut self) -> &mut Self {
        self.bytes(&[0xeb, 0xfe])
    }

    /// Prints the NUL-terminated string at `string` (an address in this code's space) on the
    /// UART at `port`, clobbering al, dx and si.
    pub fn print(&mut self, port: u16, string: Label) -> &mut Self {
        self.mov_si_label(string);
        self.print_si(port)
    }

    /// Prints the NUL-terminated string si/esi points at, clobbering al, dx and si.
    pub fn print_si(&mut self, port: u16) -> &mut Self {
        let next = self.label();
        let done = self.label();
        self.mov_dx(port);
        self.bind(next);
        self.lodsb().test_al_al().jz(done).out_dx_al().jmp(next);
        self.bind(done);
        self
    }

    /// `mov si/esi, <address of label>`, patched when the code is finished.
    pub fn mov_si_label(&mut self, l: Label) -> &mut Self {
        self.code.push(0xbe);
        let at = self.code.len();
        match self.mode {
            Mode::Long => self.code.extend_from_slice(&[0; 4]),
            Mode::Real => self.code.extend_from_slice(&[0; 2]),
        }
        self.abs_fixups.push((at, l));
        self
    }

    /// Finishes the code: resolves jumps and label addresses.
    pub fn finish(mut self) -> Result<Vec<u8>, AsmError> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].ok_or(AsmError::Unbound(l.0))?;
            let distance = target as i64 - (at as i64 + 1);
            let d = i8::try_from(distance).map_err(|_| AsmError::OutOfRange { at, distance })?;
            self.code[at] = d as u8;
        }
        for &(at, l) in &self.abs_fixups {
            let target = self.labels[l.0].ok_or(AsmError::Unbound(l.0))?;
            let addr = self.origin + target as u64;
            match self.mode {
                Mode::Long => self.code[at..at + 4].copy_from_slice(&(addr as u32).to_le_bytes()),
                Mode::Real => self.code[at..at + 2].copy_from_slice(&(addr as u16).to_le_bytes()),
            }
        }
        Ok(self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_mode_print_loop() {
        let mut a = Asm::new(Mode::Real, 0);
        let s = a.label();
        a.print(0x3f8, s).hlt();
        a.bind(s);
        a.bytes(b"hi\0");
        let code = a.finish().unwrap();
        // mov si,0x0f; mov dx,0x3f8; lodsb; test al,al; jz +3; out dx,al; jmp -8; hlt; "hi\0"
        assert_eq!(
            code,
            [
                0xbe, 0x0f, 0x00, 0xba, 0xf8, 0x03, 0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb, 0xf8,
                0xf4, b'h', b'i', 0
            ]
        );
    }

    #[test]
    fn long_mode_prefixes() {
        let mut a = Asm::new(Mode::Long, 0x10_0000);
        a.mov_dx(0x3f8).mov_ebx(0xfeb0_0000).store32_at_rbx(0x5555);
        let code = a.finish().unwrap();
        assert_eq!(
            code,
            [0x66, 0xba, 0xf8, 0x03, 0xbb, 0x00, 0x00, 0xb0, 0xfe, 0xc7, 0x03, 0x55, 0x55, 0, 0]
        );
    }

    #[test]
    fn loads_through_a_base_register() {
        let mut a = Asm::new(Mode::Long, 0);
        a.load_esi(Base::Ebx, 0x10).load_esi(Base::Esi, 0x228);
        let code = a.finish().unwrap();
        // mov esi,[rbx+0x10]; mov esi,[rsi+0x228]
        assert_eq!(
            code,
            [0x8b, 0xb3, 0x10, 0, 0, 0, 0x8b, 0xb6, 0x28, 0x02, 0, 0]
        );
    }

    #[test]
    fn unbound_and_far_labels_are_errors() {
        let mut a = Asm::new(Mode::Long, 0);
        let l = a.label();
        a.jmp(l);
        assert_eq!(a.finish(), Err(AsmError::Unbound(0)));
        let mut a = Asm::new(Mode::Long, 0);
        let l = a.label();
        a.jmp(l).pad_to(300);
        a.bind(l);
        assert!(matches!(a.finish(), Err(AsmError::OutOfRange { .. })));
    }
}
