//! The load client's HTTP/1.1: a GET on a kept-alive connection, the response head parsed by
//! `httparse`, the body (chunked, sized, or up to the close) decoded in place and handed on as
//! slices of one read buffer per thread.
//!
//! Why not awc or hyper: the client shares two cores with the service it measures, so whatever it
//! spends per byte shows up in the figures. The service writes a chart batch as one HTTP chunk per
//! chart and per piece of framing between charts (a few hundred chunks a megabyte); awc reads
//! 8 KiB per system call (actix-codec's fixed read size) and hyper passes every chunk from its
//! connection task to the body's reader through a channel, and in the fan-out scenario either
//! cost as much CPU as the service. Reading up to [`READ_BUFFER`] per call and decoding the chunk
//! framing where the bytes lie costs a fraction of that (the README's Performance section has the
//! figures).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Bytes read per system call at most. One buffer per client thread, shared by its streams (each
/// read is decoded before the next await), so ten thousand idle streams do not hold one each.
const READ_BUFFER: usize = 256 * 1024;

/// The longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER]);
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// How the body ends.
    pub framing: Framing,
    /// The server keeps the connection open after the body.
    pub keep_alive: bool,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    /// Until the server closes the connection.
    Close,
}

/// Parses a response head from the start of `buf`: `None` while incomplete, else the head and its
/// length in bytes.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<(Head, usize)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(invalid(format!("response head over {MAX_HEAD} bytes")));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(format!("response head: {e}"))),
    };
    let status = response.code.unwrap_or_default();
    let mut framing = Framing::Close;
    let mut keep_alive = response.version == Some(1);
    for header in response.headers.iter() {
        let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
        if header.name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
            framing = Framing::Chunked;
        } else if header.name.eq_ignore_ascii_case("content-length") && framing == Framing::Close {
            let n = value
                .trim()
                .parse()
                .map_err(|_| invalid(format!("content-length {value:?}")))?;
            framing = Framing::Length(n);
        } else if header.name.eq_ignore_ascii_case("connection") {
            keep_alive = value.contains("keep-alive") || (keep_alive && !value.contains("close"));
        }
    }
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Some((
        Head {
            status,
            framing,
            keep_alive,
        },
        len,
    )))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Decodes a body as its bytes arrive.
#[derive(Debug)]
pub struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line: the size so far, and whether an extension (`;...`) started.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// After the size line's CR.
    SizeLf {
        size: u64,
    },
    /// Inside a chunk's data.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, each `len` bytes so far, up to an empty line.
    Trailer {
        len: usize,
        cr: bool,
    },
    /// A sized body with this many bytes left.
    Length(u64),
    /// A body read until the connection closes.
    UntilClose,
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Chunked => State::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Close => State::UntilClose,
        };
        BodyDecoder { state }
    }

    /// The whole body was read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// The connection closed: fine only for a body that ends with it.
    pub fn closed(&mut self) -> io::Result<()> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed inside the body",
            )),
        }
    }

    /// Decodes `input`, handing each piece of body data to `data`. Bytes after the end of the
    /// body are an error: requests are not pipelined.
    pub fn feed(&mut self, mut input: &[u8], mut data: impl FnMut(&[u8])) -> io::Result<()> {
        while !input.is_empty() {
            match self.state {
                State::Data(left) | State::Length(left) => {
                    let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    data(&input[..n]);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.state = match (self.state, left) {
                        (State::Data(_), 0) => State::DataCr,
                        (State::Data(_), _) => State::Data(left),
                        (_, 0) => State::Done,
                        _ => State::Length(left),
                    };
                }
                State::UntilClose => {
                    data(input);
                    input = &[];
                }
                State::Done => return Err(invalid("bytes after the end of the body".into())),
                _ => {
                    self.step(input[0])?;
                    input = &input[1..];
                }
            }
        }
        Ok(())
    }

    /// One byte of chunk framing.
    fn step(&mut self, byte: u8) -> io::Result<()> {
        self.state = match (self.state, byte) {
            (State::Size { size, digits, .. }, b'\r') if digits > 0 => State::SizeLf { size },
            (State::Size { size, digits, .. }, b';') if digits > 0 => State::Size {
                size,
                digits,
                ext: true,
            },
            (State::Size { ext: true, .. }, _) => self.state,
            (State::Size { size, digits, .. }, _) if digits < 16 => {
                let digit = (byte as char)
                    .to_digit(16)
                    .ok_or_else(|| invalid(format!("chunk size: byte {byte:#04x}")))?;
                State::Size {
                    size: size * 16 + u64::from(digit),
                    digits: digits + 1,
                    ext: false,
                }
            }
            (State::SizeLf { size: 0 }, b'\n') => State::Trailer { len: 0, cr: false },
            (State::SizeLf { size }, b'\n') => State::Data(size),
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataLf, b'\n') => State::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            (State::Trailer { len, .. }, b'\r') => State::Trailer { len, cr: true },
            (State::Trailer { len: 0, cr: true }, b'\n') => State::Done,
            (State::Trailer { cr: true, .. }, b'\n') => State::Trailer { len: 0, cr: false },
            (State::Trailer { len, .. }, _) if len < MAX_HEAD => State::Trailer {
                len: len + 1,
                cr: false,
            },
            (state, byte) => {
                return Err(invalid(format!(
                    "chunked body: byte {byte:#04x} in state {state:?}"
                )));
            }
        };
        Ok(())
    }
}

/// One connection to the service.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    /// It has served a response before (so the server may have closed it meanwhile).
    reused: bool,
}

impl Conn {
    pub async fn open(addr: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            reused: false,
        })
    }

    /// A connection whose receive buffer is `rcvbuf` bytes (before the kernel doubles it), set
    /// before connecting so the window never grows past it: a slow reader that lets the service's
    /// writes back up quickly.
    pub async fn open_with_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> io::Result<Conn> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_recv_buffer_size(rcvbuf)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            reused: false,
        })
    }

    pub fn reused(&self) -> bool {
        self.reused
    }

    /// Marks the connection as having served a whole response, before it goes back to a pool.
    pub fn served(mut self) -> Conn {
        self.reused = true;
        self
    }

    /// Sends `GET path` with the given extra header lines (each ending in CRLF).
    pub async fn get(&mut self, host: &str, path: &str, headers: &str) -> io::Result<()> {
        let request = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{headers}\r\n");
        self.stream.write_all(request.as_bytes()).await
    }

    /// Waits for bytes and hands what one read got to `f`, whose answer it returns: `None` when
    /// the server closed.
    /// The slice lives in the thread's read buffer, so `f` must finish with it before returning.
    pub async fn read<R>(&mut self, mut f: impl FnMut(&[u8]) -> R) -> io::Result<Option<R>> {
        loop {
            self.stream.readable().await?;
            let got = READ_BUF.with_borrow_mut(|buf| match self.stream.try_read(buf) {
                Ok(0) => Ok(Some(None)),
                Ok(n) => Ok(Some(Some(f(&buf[..n])))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            })?;
            if let Some(got) = got {
                return Ok(got);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_two(framing: Framing, wire: &[u8], cut: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut d = BodyDecoder::new(framing);
        let mut out = Vec::new();
        d.feed(&wire[..cut], |b| out.extend_from_slice(b))?;
        d.feed(&wire[cut..], |b| out.extend_from_slice(b))?;
        Ok((out, d.done()))
    }

    #[test]
    fn chunked_body_at_every_split_point() {
        let wire = b"5\r\nhello\r\n1;name=value\r\n,\r\n10\r\n0123456789abcdef\r\n0\r\nx-trailer: 1\r\n\r\n";
        for cut in 0..=wire.len() {
            let (out, done) = decode_in_two(Framing::Chunked, wire, cut).unwrap();
            assert_eq!(out, b"hello,0123456789abcdef", "cut at {cut}");
            assert!(done, "cut at {cut}");
        }
    }

    #[test]
    fn chunked_body_unfinished_is_not_done() {
        let (out, done) = decode_in_two(Framing::Chunked, b"3\r\nabc\r\n", 4).unwrap();
        assert_eq!(out, b"abc");
        assert!(!done);
        let mut d = BodyDecoder::new(Framing::Chunked);
        d.feed(b"3\r\nab", |_| {}).unwrap();
        assert!(d.closed().is_err());
    }

    #[test]
    fn bad_chunk_framing_is_an_error_naming_the_byte() {
        for wire in [&b"zz\r\n"[..], b"3\r\nabcX", b"\r\n", b"0\r\n\r\nextra"] {
            let mut d = BodyDecoder::new(Framing::Chunked);
            let err = d.feed(wire, |_| {}).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{wire:?}: {err}");
        }
    }

    #[test]
    fn sized_and_close_delimited_bodies() {
        let (out, done) = decode_in_two(Framing::Length(5), b"hello", 2).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hello"[..], true));
        assert!(BodyDecoder::new(Framing::Length(0)).done());
        let mut d = BodyDecoder::new(Framing::Close);
        let mut out = Vec::new();
        d.feed(b"all of it", |b| out.extend_from_slice(b)).unwrap();
        assert!(!d.done());
        d.closed().unwrap();
        assert!(d.done());
        assert_eq!(out, b"all of it");
    }

    #[test]
    fn heads() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        assert_eq!(parse_head(&head[..20]).unwrap(), None);
        let (parsed, len) = parse_head(head).unwrap().unwrap();
        assert_eq!(&head[len..], b"rest");
        assert_eq!(
            parsed,
            Head {
                status: 200,
                framing: Framing::Chunked,
                keep_alive: true
            }
        );
        let (parsed, _) = parse_head(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\nconnection: close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            parsed,
            Head {
                status: 400,
                framing: Framing::Length(12),
                keep_alive: false
            }
        );
        let (parsed, _) = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(parsed.framing, Framing::Close);
        assert!(!parsed.keep_alive);
        assert!(parse_head(b"NOT HTTP\r\n\r\n").is_err());
    }
}
