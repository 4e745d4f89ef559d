//! A stopped tunnel, written down: its two sockets, the bytes it had read
//! and not yet passed on, where each direction stood, and who it connects.

use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::snapshot::{Reader, SnapshotError, Writer};
use crate::tunnel::identity::{Client, Identity};
use crate::tunnel::inspect::Saved as InspectedState;

/// A tunnel on its way to another process.
pub struct MovedTunnel {
    pub identity: Identity,
    /// How long it has been open.
    pub age: Duration,
    pub client: MovedSocket,
    pub backend: MovedSocket,
    pub state: MovedState,
    /// When it stopped, on the system's monotonic clock (the same in both
    /// processes): the new one knows how long the tunnel paused.
    pub stopped_at: Duration,
}

/// One side's connection, and what was read from it before the tunnel
/// started (hyper's read past the handshake) and is still to be handed
/// out first.
pub struct MovedSocket {
    pub socket: TcpStream,
    pub unread: Bytes,
}

/// How far each direction had got.
pub enum MovedState {
    Plain { upstream: CopyState, downstream: CopyState },
    Inspected(Box<InspectedState>),
}

/// One direction of a plain tunnel.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CopyState {
    /// Read from the source, not yet written: written first.
    pub unwritten: Vec<u8>,
    /// The source ended; the destination's write side is (being) shut down.
    pub source_ended: bool,
    pub done: bool,
    pub bytes: u64,
    /// How long ago the source ended.
    pub ended_ago: Option<Duration>,
}

impl MovedTunnel {
    /// The message and the two sockets to send beside it (client first).
    pub fn encode(&self) -> (Vec<u8>, [BorrowedFd<'_>; 2]) {
        let mut out = Writer::default();
        write_identity(&mut out, &self.identity);
        out.duration(self.age).duration(self.stopped_at);
        out.bytes(&self.client.unread).bytes(&self.backend.unread);
        match &self.state {
            MovedState::Plain { upstream, downstream } => {
                out.u8(0);
                write_copy(&mut out, upstream);
                write_copy(&mut out, downstream);
            }
            MovedState::Inspected(state) => {
                out.u8(1);
                state.save(&mut out);
            }
        }
        (
            out.into_bytes(),
            [self.client.socket.as_fd(), self.backend.socket.as_fd()],
        )
    }

    /// The tunnel `message` describes, with the two sockets sent beside it.
    pub fn decode(message: &[u8], sockets: [OwnedFd; 2]) -> Result<MovedTunnel, SnapshotError> {
        let mut input = Reader::new(message);
        let identity = read_identity(&mut input)?;
        let age = input.duration()?;
        let stopped_at = input.duration()?;
        let client_unread = Bytes::copy_from_slice(input.bytes()?);
        let backend_unread = Bytes::copy_from_slice(input.bytes()?);
        let state = match input.u8()? {
            0 => MovedState::Plain {
                upstream: read_copy(&mut input)?,
                downstream: read_copy(&mut input)?,
            },
            1 => MovedState::Inspected(Box::new(InspectedState::load(&mut input)?)),
            _ => return Err(SnapshotError("unknown kind of tunnel")),
        };
        input.finish()?;
        let [client, backend] = sockets;
        Ok(MovedTunnel {
            identity,
            age,
            client: MovedSocket {
                socket: TcpStream::from(client),
                unread: client_unread,
            },
            backend: MovedSocket {
                socket: TcpStream::from(backend),
                unread: backend_unread,
            },
            state,
            stopped_at,
        })
    }
}

fn write_identity(out: &mut Writer, identity: &Identity) {
    match identity.client {
        Client::Direct(address) => out.u8(0).socket_addr(address),
        Client::Forwarded(ip) => out.u8(1).ip(ip),
    };
    out.str(&identity.listener)
        .str(&identity.route)
        .str(&identity.upstream)
        .str(&identity.server)
        .option(identity.subprotocol.as_deref(), |out, protocol| {
            out.str(protocol);
        })
        .bool(identity.inspected)
        .str(identity.protocol);
}

fn read_identity(input: &mut Reader<'_>) -> Result<Identity, SnapshotError> {
    let client = match input.u8()? {
        0 => Client::Direct(input.socket_addr()?),
        1 => Client::Forwarded(input.ip()?),
        _ => return Err(SnapshotError("unknown kind of client")),
    };
    let name = |input: &mut Reader<'_>| -> Result<Arc<str>, SnapshotError> { Ok(input.str()?.into()) };
    Ok(Identity {
        client,
        listener: name(input)?,
        route: name(input)?,
        upstream: name(input)?,
        server: name(input)?,
        subprotocol: input.option(|input| Ok(input.str()?.into()))?,
        inspected: input.bool()?,
        protocol: match input.str()? {
            "http/1.1" => "http/1.1",
            "h2" => "h2",
            _ => return Err(SnapshotError("unknown protocol")),
        },
        // Not moved: hand-over protocol 1 does not carry them.
        path: None,
        handshake_ms: None,
        attempts: None,
    })
}

fn write_copy(out: &mut Writer, copy: &CopyState) {
    out.bytes(&copy.unwritten)
        .bool(copy.source_ended)
        .bool(copy.done)
        .u64(copy.bytes)
        .option(copy.ended_ago, |out, ago| {
            out.duration(ago);
        });
}

fn read_copy(input: &mut Reader<'_>) -> Result<CopyState, SnapshotError> {
    Ok(CopyState {
        unwritten: input.bytes()?.to_vec(),
        source_ended: input.bool()?,
        done: input.bool()?,
        bytes: input.u64()?,
        ended_ago: input.option(Reader::duration)?,
    })
}
