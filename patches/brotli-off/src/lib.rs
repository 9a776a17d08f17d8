//! The `brotli` types pingora-core names, without brotli: see README.md. Writes fail with
//! `ErrorKind::Unsupported`.

use std::io::{self, Write};

fn unsupported() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "brotli is not built into this gateway (patches/brotli-off)",
    )
}

/// In place of brotli's streaming compressor.
pub struct CompressorWriter<W: Write> {
    inner: W,
}

impl<W: Write> CompressorWriter<W> {
    pub fn new(inner: W, _buffer_size: usize, _quality: u32, _lgwin: u32) -> Self {
        Self { inner }
    }
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CompressorWriter<W> {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(unsupported())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(unsupported())
    }
}

/// In place of brotli's streaming decompressor.
pub struct DecompressorWriter<W: Write> {
    inner: W,
}

impl<W: Write> DecompressorWriter<W> {
    pub fn new(inner: W, _buffer_size: usize) -> Self {
        Self { inner }
    }
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for DecompressorWriter<W> {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(unsupported())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(unsupported())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_write_fails_and_nothing_is_written() {
        let mut c = CompressorWriter::new(Vec::new(), 4096, 5, 19);
        let e = c.write_all(b"hello").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(c.flush().is_err());
        assert!(c.get_ref().is_empty());
        let mut d = DecompressorWriter::new(Vec::new(), 0);
        assert_eq!(
            d.write_all(b"\x0b\x02\x80hello\x03").unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        assert!(d.into_inner().is_empty());
    }
}
