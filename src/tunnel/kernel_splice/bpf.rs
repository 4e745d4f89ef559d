//! The kernel's side of the splice: three maps and a stream verdict
//! program, made with raw `bpf(2)` calls (no C build step, no loader
//! crate: the program is a handful of instructions).
//!
//! - `peers` (SOCKHASH): a socket's cookie → the socket its bytes go to.
//!   No program is attached to it: a socket in it is only a target.
//! - `spliced` (SOCKHASH): a socket's cookie → the socket itself; the
//!   verdict program is attached to this map, so a socket runs it from the
//!   moment it enters and stops when it leaves. Entering `peers` first, and
//!   `spliced` only once both sockets are in `peers`, means the program
//!   never looks for a peer that is not there yet.
//! - `forwarded` (HASH): a socket's cookie → the bytes the program has
//!   sent on from it, for the tunnel's byte counts and for knowing when the
//!   kernel has handed everything to the peer's send queue.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_int = 2;
const BPF_MAP_DELETE_ELEM: libc::c_int = 3;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;
/// Hash map elements allocated on insert, not all at creation.
const BPF_F_NO_PREALLOC: u32 = 1;
/// Map update: only a key that is not there yet.
const BPF_NOEXIST: u64 = 1;

/// Sockets the maps hold at most: 32,768 kernel-spliced tunnels at once;
/// a tunnel beyond that is spliced in user space. The hash maps allocate
/// their elements as sockets come, so only the buckets (16 bytes each)
/// are paid for up front.
pub const CAPACITY: u32 = 65_536;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// Destination register in the low nibble, source in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes used below (linux/bpf.h, linux/bpf_common.h).
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const STX_DW: u8 = 0x7b;
const LDX_W: u8 = 0x61;
const LD_IMM64: u8 = 0x18;
const JEQ_IMM: u8 = 0x15;
const JNE_IMM: u8 = 0x55;
const ATOMIC_DW: u8 = 0xdb;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
/// `src` of a 64-bit load: its immediate is a map's descriptor.
const PSEUDO_MAP_FD: u8 = 1;

// Helpers (enum bpf_func_id).
const MAP_LOOKUP_ELEM: i32 = 1;
const GET_SOCKET_COOKIE: i32 = 46;
const SK_REDIRECT_HASH: i32 = 72;

/// `SK_DROP` and `SK_PASS`, a verdict program's answers.
const SK_DROP: i32 = 0;
const SK_PASS: i32 = 1;

/// Where the map descriptors go in [`program`] (the first of each
/// two-slot 64-bit load).
const PEERS_AT: usize = 8;
const FORWARDED_AT: usize = 16;

/// The stream verdict program. For each piece of data a socket receives:
/// look up its peer by the socket's cookie, redirect the bytes to the
/// peer's egress (they go out of the peer as if written to it), and add
/// their length to the socket's count. Empty pieces (a FIN alone) are
/// dropped: sent on, they would end in a zero-length send, which the
/// kernel reports as a broken pipe on the peer; the FIN itself is seen by
/// wsgate, which passes it on as a write shutdown.
///
/// A peer that is missing (it closed: the kernel takes a closed socket out
/// of every map) gets `SK_DROP` from the redirect: its bytes have nowhere
/// to go. `SK_PASS` would queue them for wsgate to read, behind bytes the
/// kernel may already have sent on: out of order.
fn program(peers: RawFd, forwarded: RawFd) -> [Insn; 25] {
    let mut program = [
        // r6 = ctx (the __sk_buff); r7 = its length. Empty: drop.
        insn(MOV64_REG, 6, 1, 0, 0),
        insn(LDX_W, 7, 6, 0, 0),
        insn(JNE_IMM, 7, 0, 2, 0),
        insn(MOV64_IMM, 0, 0, 0, SK_DROP),
        insn(EXIT, 0, 0, 0, 0),
        // The socket's cookie, at r10 - 8 (the key of all three maps).
        insn(CALL, 0, 0, 0, GET_SOCKET_COOKIE),
        insn(STX_DW, 10, 0, -8, 0),
        // r0 = sk_redirect_hash(ctx, peers, &cookie, 0): to the peer's
        // egress (no BPF_F_INGRESS).
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, 0),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_REG, 3, 10, 0, 0),
        insn(ADD64_IMM, 3, 0, 0, -8),
        insn(MOV64_IMM, 4, 0, 0, 0),
        insn(CALL, 0, 0, 0, SK_REDIRECT_HASH),
        // Not redirected: the verdict as it is (a drop).
        insn(MOV64_REG, 8, 0, 0, 0),
        insn(JNE_IMM, 8, 0, 7, SK_PASS),
        // Count the bytes: forwarded[cookie] += len, atomically (the two
        // sockets' programs may run at once on two processors).
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, 0),
        insn(0, 0, 0, 0, 0),
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, -8),
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, 1, 0),
        insn(ATOMIC_DW, 0, 7, 0, 0),
        // The redirect's verdict.
        insn(MOV64_REG, 0, 8, 0, 0),
        insn(EXIT, 0, 0, 0, 0),
    ];
    program[PEERS_AT].imm = peers;
    program[FORWARDED_AT].imm = forwarded;
    program
}

/// The maps and the program, made once per process.
pub struct Maps {
    peers: OwnedFd,
    spliced: OwnedFd,
    forwarded: OwnedFd,
    /// Held so the program lives as long as the maps (the attachment holds
    /// it too; this makes it plain).
    _program: OwnedFd,
}

impl Maps {
    /// Creates the maps, loads the program and attaches it. The error says
    /// why not (with the verifier's log when it refused the program).
    pub fn load() -> Result<Maps, String> {
        let map = |kind: u32, value_size: u32, flags: u32, name: &str| {
            create_map(kind, 8, value_size, CAPACITY, flags, name)
                .map_err(|error| format!("cannot create the {name} map: {error}"))
        };
        let peers = map(BPF_MAP_TYPE_SOCKHASH, 4, 0, "wsgate_peers")?;
        let spliced = map(BPF_MAP_TYPE_SOCKHASH, 4, 0, "wsgate_spliced")?;
        let forwarded = map(BPF_MAP_TYPE_HASH, 8, BPF_F_NO_PREALLOC, "wsgate_bytes")?;
        let program = load_program(&program(peers.as_raw_fd(), forwarded.as_raw_fd()))?;
        let mut attr = Attr::default();
        attr.set_u32(0, spliced.as_raw_fd() as u32);
        attr.set_u32(4, program.as_raw_fd() as u32);
        attr.set_u32(8, BPF_SK_SKB_STREAM_VERDICT);
        bpf(BPF_PROG_ATTACH, &mut attr).map_err(|error| format!("cannot attach the verdict program: {error}"))?;
        Ok(Maps {
            peers,
            spliced,
            forwarded,
            _program: program,
        })
    }

    /// Makes `socket`'s bytes go to `peer`, and starts its count.
    pub fn pair(&self, socket: u64, peer: RawFd) -> io::Result<()> {
        update(&self.forwarded, socket, &0u64.to_ne_bytes())?;
        update(&self.peers, socket, &(peer as u32).to_ne_bytes())
    }

    /// Starts the program on `socket` (`cookie` is its cookie).
    pub fn start(&self, cookie: u64, socket: RawFd) -> io::Result<()> {
        update(&self.spliced, cookie, &(socket as u32).to_ne_bytes())
    }

    /// Takes the socket of `cookie` out of every map.
    pub fn forget(&self, cookie: u64) {
        delete(&self.spliced, cookie);
        delete(&self.peers, cookie);
        delete(&self.forwarded, cookie);
    }

    /// The bytes the program has sent on from the socket of `cookie`.
    pub fn forwarded(&self, cookie: u64) -> u64 {
        let mut value = [0u8; 8];
        let mut attr = Attr::default();
        attr.set_u32(0, self.forwarded.as_raw_fd() as u32);
        attr.set_u64(8, &cookie as *const u64 as u64);
        attr.set_u64(16, value.as_mut_ptr() as u64);
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => u64::from_ne_bytes(value),
            Err(_) => 0,
        }
    }
}

/// `union bpf_attr`, as bytes: each command reads its own fields from the
/// start; the kernel takes unused trailing bytes as zero.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Default for Attr {
    fn default() -> Self {
        Attr([0; 128])
    }
}

impl Attr {
    fn set_u32(&mut self, at: usize, value: u32) {
        self.0[at..at + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn set_u64(&mut self, at: usize, value: u64) {
        self.0[at..at + 8].copy_from_slice(&value.to_ne_bytes());
    }
}

fn bpf(command: libc::c_int, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, writable `bpf_attr` of the size passed;
    // the pointers in it point to buffers that outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

fn create_map(kind: u32, key_size: u32, value_size: u32, capacity: u32, flags: u32, name: &str) -> io::Result<OwnedFd> {
    let mut attr = Attr::default();
    attr.set_u32(0, kind);
    attr.set_u32(4, key_size);
    attr.set_u32(8, value_size);
    attr.set_u32(12, capacity);
    attr.set_u32(16, flags);
    // map_name[16] at 28, after inner_map_fd and numa_node.
    let name = &name.as_bytes()[..name.len().min(15)];
    attr.0[28..28 + name.len()].copy_from_slice(name);
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

fn load_program(instructions: &[Insn]) -> Result<OwnedFd, String> {
    let license = c"GPL";
    let mut log = vec![0u8; 16 * 1024];
    let mut attr = Attr::default();
    attr.set_u32(0, BPF_PROG_TYPE_SK_SKB);
    attr.set_u32(4, instructions.len() as u32);
    attr.set_u64(8, instructions.as_ptr() as u64);
    attr.set_u64(16, license.as_ptr() as u64);
    // The verifier's log, level 1: only read when it refuses.
    attr.set_u32(24, 1);
    attr.set_u32(28, log.len() as u32);
    attr.set_u64(32, log.as_mut_ptr() as u64);
    let name = b"wsgate_splice";
    attr.0[48..48 + name.len()].copy_from_slice(name);
    bpf(BPF_PROG_LOAD, &mut attr).map(owned).map_err(|error| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let log = String::from_utf8_lossy(&log[..end]);
        let log = log.trim();
        if log.is_empty() {
            format!("the kernel refused the verdict program: {error}")
        } else {
            format!(
                "the kernel refused the verdict program: {error}; verifier: {}",
                log.replace('\n', " | ")
            )
        }
    })
}

fn update(map: &OwnedFd, key: u64, value: &[u8]) -> io::Result<()> {
    let mut attr = Attr::default();
    attr.set_u32(0, map.as_raw_fd() as u32);
    attr.set_u64(8, &key as *const u64 as u64);
    attr.set_u64(16, value.as_ptr() as u64);
    attr.set_u64(24, BPF_NOEXIST);
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
}

/// Missing keys are fine: the kernel takes a closed socket out by itself.
fn delete(map: &OwnedFd, key: u64) {
    let mut attr = Attr::default();
    attr.set_u32(0, map.as_raw_fd() as u32);
    attr.set_u64(8, &key as *const u64 as u64);
    let _ = bpf(BPF_MAP_DELETE_ELEM, &mut attr);
}
