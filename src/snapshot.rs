//! A fixed binary layout for what one process hands to the next at a
//! binary upgrade ([`crate::lifecycle::handover`]): open tunnels described
//! down to their frame readers, and the messages around them.
//!
//! Written and read by the same few primitives on both sides, in the same
//! order; the hand-over's protocol version ([`crate::lifecycle::handover`])
//! says which order. A reader never panics on bytes it does not expect: it
//! answers [`SnapshotError`], and the hand-over refuses the message.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Bytes that do not describe what they were read as.
#[derive(Debug, Clone, thiserror::Error)]
#[error("hand-over message unreadable: {0}")]
pub struct SnapshotError(pub &'static str);

/// Appends values to a message.
#[derive(Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    pub fn u8(&mut self, value: u8) -> &mut Self {
        self.bytes.push(value);
        self
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.u8(u8::from(value))
    }

    pub fn u16(&mut self, value: u16) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn f64(&mut self, value: f64) -> &mut Self {
        self.u64(value.to_bits())
    }

    /// Length first (32 bits), then the bytes.
    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.u32(u32::try_from(value.len()).unwrap_or(u32::MAX));
        self.bytes
            .extend_from_slice(&value[..value.len().min(u32::MAX as usize)]);
        self
    }

    pub fn str(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    /// Microseconds, saturating.
    pub fn duration(&mut self, value: Duration) -> &mut Self {
        self.u64(u64::try_from(value.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn option<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Self, T)) -> &mut Self {
        match value {
            Some(value) => {
                self.u8(1);
                write(self, value);
            }
            None => {
                self.u8(0);
            }
        }
        self
    }

    pub fn ip(&mut self, ip: IpAddr) -> &mut Self {
        match ip {
            IpAddr::V4(v4) => self.u8(4).bytes(&v4.octets()),
            IpAddr::V6(v6) => self.u8(6).bytes(&v6.octets()),
        }
    }

    pub fn socket_addr(&mut self, address: SocketAddr) -> &mut Self {
        self.ip(address.ip()).u16(address.port())
    }
}

/// Reads values back in the order they were written.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    /// Nothing is left: a message read whole.
    pub fn finish(&self) -> Result<(), SnapshotError> {
        match self.bytes.is_empty() {
            true => Ok(()),
            false => Err(SnapshotError("bytes left over")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.bytes.len() < n {
            return Err(SnapshotError("message cut short"));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    pub fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(SnapshotError("not a boolean")),
        }
    }

    pub fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Result<f64, SnapshotError> {
        Ok(f64::from_bits(self.u64()?))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    pub fn str(&mut self) -> Result<&'a str, SnapshotError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| SnapshotError("not UTF-8"))
    }

    pub fn duration(&mut self) -> Result<Duration, SnapshotError> {
        Ok(Duration::from_micros(self.u64()?))
    }

    pub fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, SnapshotError>,
    ) -> Result<Option<T>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(SnapshotError("not an option")),
        }
    }

    pub fn ip(&mut self) -> Result<IpAddr, SnapshotError> {
        let family = self.u8()?;
        let octets = self.bytes()?;
        match (family, octets.len()) {
            (4, 4) => Ok(IpAddr::from(<[u8; 4]>::try_from(octets).unwrap_or_default())),
            (6, 16) => Ok(IpAddr::from(<[u8; 16]>::try_from(octets).unwrap_or_default())),
            _ => Err(SnapshotError("not an IP address")),
        }
    }

    pub fn socket_addr(&mut self) -> Result<SocketAddr, SnapshotError> {
        Ok(SocketAddr::new(self.ip()?, self.u16()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_in_order_and_short_input_is_an_error() {
        let mut writer = Writer::default();
        writer
            .u8(7)
            .bool(true)
            .u16(443)
            .u32(70_000)
            .u64(u64::MAX)
            .f64(0.25)
            .str("route")
            .duration(Duration::from_millis(1500))
            .option(Some(3u32), |w, v| {
                w.u32(v);
            })
            .option(None::<u32>, |w, v| {
                w.u32(v);
            })
            .socket_addr("[::1]:9000".parse().unwrap())
            .socket_addr("127.0.0.1:80".parse().unwrap());
        let bytes = writer.into_bytes();
        let mut reader = Reader::new(&bytes);
        assert_eq!(reader.u8().unwrap(), 7);
        assert!(reader.bool().unwrap());
        assert_eq!(reader.u16().unwrap(), 443);
        assert_eq!(reader.u32().unwrap(), 70_000);
        assert_eq!(reader.u64().unwrap(), u64::MAX);
        assert_eq!(reader.f64().unwrap(), 0.25);
        assert_eq!(reader.str().unwrap(), "route");
        assert_eq!(reader.duration().unwrap(), Duration::from_millis(1500));
        assert_eq!(reader.option(|r| r.u32()).unwrap(), Some(3));
        assert_eq!(reader.option(|r| r.u32()).unwrap(), None);
        assert_eq!(reader.socket_addr().unwrap(), "[::1]:9000".parse().unwrap());
        assert_eq!(reader.socket_addr().unwrap(), "127.0.0.1:80".parse().unwrap());
        reader.finish().unwrap();
        for cut in 0..bytes.len() {
            let mut reader = Reader::new(&bytes[..cut]);
            let all = (|| {
                reader.u8()?;
                reader.bool()?;
                reader.u16()?;
                reader.u32()?;
                reader.u64()?;
                reader.f64()?;
                reader.str()?;
                reader.duration()?;
                reader.option(|r| r.u32())?;
                reader.option(|r| r.u32())?;
                reader.socket_addr()?;
                reader.socket_addr()
            })();
            assert!(all.is_err(), "cut at {cut} must not read whole");
        }
    }
}
