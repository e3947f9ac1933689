//! What both sides of HTTP/1.1 share: heads kept as their bytes ([`RawHead`]), what each
//! header means to HTTP/1.1 ([`Role`]), reading message bodies by their framing (RFC 9112
//! section 6), chunked decoding and the `connection` header's tokens. The listener reads
//! requests with it, the upstream client responses.

use std::io;
use std::ops::Range;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The longest chunk-size line or trailer line accepted.
const MAX_LINE_BYTES: usize = 4096;
/// The most headers a request or response head may have.
pub const MAX_HEADERS: usize = 100;

/// Where a header's name and value are in the head's bytes.
#[derive(Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Where header `h`, parsed by `httparse` from `buf`, is in it.
fn span(buf: &[u8], h: &httparse::Header<'_>) -> Span {
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    Span {
        name: offset(h.name.as_bytes()),
        value: offset(h.value),
    }
}

/// The message headers that decide framing and the connection's fate, noted while a head is
/// located: most messages have none of them, and then nothing is looked up.
#[derive(Clone, Copy, Default)]
pub struct Seen {
    pub transfer_encoding: bool,
    pub content_length: bool,
    pub connection: bool,
    pub expect: bool,
}

/// Bytes read from a connection, and the way to read more.
pub trait Source {
    fn buffer(&mut self) -> &mut BytesMut;
    /// Reads into the buffer: `Ok(0)` when the peer closed its side.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>>;
}

/// How a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the peer closes (responses only).
    Close,
    /// Read to the end.
    Done,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data: this many bytes are left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

impl Framing {
    /// Whether nothing is left to read.
    pub fn is_done(self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }

    /// The bytes left, when known.
    pub fn exact(self) -> Option<u64> {
        match self {
            Framing::Done => Some(0),
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("connection closed before the body was complete")]
    Incomplete,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{0}")]
    Invalid(&'static str),
}

/// The next piece of the body: `None` once it ended (and `framing` is `Done`). A body
/// framed by the close ends at the peer's close; every other one that meets it is
/// incomplete.
pub fn poll_decode<S: Source>(
    framing: &mut Framing,
    src: &mut S,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, DecodeError>>> {
    loop {
        match *framing {
            Framing::Done => return Poll::Ready(None),
            Framing::Length(0) => {
                *framing = Framing::Done;
                return Poll::Ready(None);
            }
            Framing::Length(left) => {
                let data = match ready!(poll_data(src, cx, left)) {
                    Ok(Some(data)) => data,
                    Ok(None) => return Poll::Ready(Some(Err(DecodeError::Incomplete))),
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                };
                *framing = Framing::Length(left - data.len() as u64);
                return Poll::Ready(Some(Ok(data)));
            }
            Framing::Close => {
                return match ready!(poll_data(src, cx, u64::MAX)) {
                    Ok(Some(data)) => Poll::Ready(Some(Ok(data))),
                    Ok(None) => {
                        *framing = Framing::Done;
                        Poll::Ready(None)
                    }
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                };
            }
            Framing::Chunked(Chunk::Size) => match ready!(poll_line(src, cx)) {
                Ok(line) => match chunk_size(&line) {
                    Some(0) => *framing = Framing::Chunked(Chunk::Trailers),
                    Some(n) => *framing = Framing::Chunked(Chunk::Data(n)),
                    None => return Poll::Ready(Some(Err(DecodeError::Invalid("bad chunk size")))),
                },
                Err(e) => return Poll::Ready(Some(Err(e))),
            },
            Framing::Chunked(Chunk::Data(left)) => {
                let data = match ready!(poll_data(src, cx, left)) {
                    Ok(Some(data)) => data,
                    Ok(None) => return Poll::Ready(Some(Err(DecodeError::Incomplete))),
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                };
                let left = left - data.len() as u64;
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Poll::Ready(Some(Ok(data)));
            }
            Framing::Chunked(Chunk::DataEnd) => match ready!(poll_line(src, cx)) {
                Ok(line) if line.is_empty() => *framing = Framing::Chunked(Chunk::Size),
                Ok(_) => {
                    return Poll::Ready(Some(Err(DecodeError::Invalid("chunk without its CRLF"))));
                }
                Err(e) => return Poll::Ready(Some(Err(e))),
            },
            Framing::Chunked(Chunk::Trailers) => match ready!(poll_line(src, cx)) {
                Ok(line) if line.is_empty() => {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                // Trailer fields are dropped.
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            },
        }
    }
}

/// [`poll_decode`] for a body that owns its source until it ends: after an error the source
/// is dropped (nothing can be read past a broken body) and the body is done.
pub fn poll_body<S: Source>(
    framing: &mut Framing,
    src: &mut Option<S>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Bytes, DecodeError>>> {
    if *framing == Framing::Done {
        return Poll::Ready(None);
    }
    let next = match src.as_mut() {
        Some(s) => ready!(poll_decode(framing, s, cx)),
        None => Some(Err(DecodeError::Incomplete)),
    };
    if let Some(Err(_)) = next {
        *src = None;
        *framing = Framing::Done;
    }
    Poll::Ready(next)
}

/// Takes up to `limit` bytes from the buffer, reading when it is empty; `None` at the close.
fn poll_data<S: Source>(
    src: &mut S,
    cx: &mut Context<'_>,
    limit: u64,
) -> Poll<io::Result<Option<Bytes>>> {
    if src.buffer().is_empty() && ready!(src.poll_fill(cx))? == 0 {
        return Poll::Ready(Ok(None));
    }
    let buf = src.buffer();
    let take = buf.len().min(usize::try_from(limit).unwrap_or(usize::MAX));
    Poll::Ready(Ok(Some(buf.split_to(take).freeze())))
}

/// A complete line (without its CRLF) from the buffer, reading as needed.
fn poll_line<S: Source>(src: &mut S, cx: &mut Context<'_>) -> Poll<Result<Bytes, DecodeError>> {
    loop {
        let buf = src.buffer();
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(i).freeze();
            buf.advance(2);
            return Poll::Ready(Ok(line));
        }
        if buf.len() > MAX_LINE_BYTES {
            return Poll::Ready(Err(DecodeError::Invalid("chunk line too long")));
        }
        if ready!(src.poll_fill(cx))? == 0 {
            return Poll::Ready(Err(DecodeError::Incomplete));
        }
    }
}

/// The size of a chunk-size line: hex digits, then optional extensions after `;`.
pub fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|&b| b == b';').next()?;
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// Whether a comma-separated header's `values` list `token` (case-insensitive).
pub fn lists<'a>(values: impl Iterator<Item = &'a [u8]>, token: &str) -> bool {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether the last of the `transfer-encoding` `values`' codings is `chunked`: `None` without
/// values, `Some(false)` when they name no coding (one we cannot read).
pub fn last_coding_is_chunked<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<bool> {
    let mut present = false;
    let mut last: Option<&[u8]> = None;
    for v in values {
        present = true;
        for t in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if !t.is_empty() {
                last = Some(t);
            }
        }
    }
    present.then(|| last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")))
}

/// The length the `content-length` `values` agree on.
pub fn length_of<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for v in values {
        let t = v.trim_ascii();
        if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
            return Err("bad content-length");
        }
        let n = t.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length");
        }
        length = Some(n);
    }
    Ok(length)
}

/// What a header means to HTTP/1.1 itself, beyond the message it is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// An end-to-end header: passed on as it is.
    #[default]
    EndToEnd,
    Connection,
    TransferEncoding,
    ContentLength,
    /// `keep-alive`, `proxy-connection`, `te`, `trailer`, `upgrade`: for this hop only.
    HopByHop,
    Date,
    // End-to-end headers a proxy adds to or replaces in requests.
    Host,
    Expect,
    RequestId,
    ForwardedFor,
    TraceParent,
    TraceState,
}

impl Role {
    /// The role's bit in a set of roles.
    fn bit(self) -> u16 {
        1 << self as u16
    }

    /// The role of a header named `name` (any case).
    pub fn of(name: &[u8]) -> Role {
        // By length and first letter: most names are none of these and fail before any
        // comparison.
        let first = name.first().map_or(0, |b| b | 0x20);
        let (known, role) = match (name.len(), first) {
            (2, b't') => ("te", Role::HopByHop),
            (4, b'd') => ("date", Role::Date),
            (4, b'h') => ("host", Role::Host),
            (6, b'e') => ("expect", Role::Expect),
            (10, b't') => ("tracestate", Role::TraceState),
            (11, b't') => ("traceparent", Role::TraceParent),
            (12, b'x') => ("x-request-id", Role::RequestId),
            (15, b'x') => ("x-forwarded-for", Role::ForwardedFor),
            (7, b't') => ("trailer", Role::HopByHop),
            (7, b'u') => ("upgrade", Role::HopByHop),
            (10, b'c') => ("connection", Role::Connection),
            (10, b'k') => ("keep-alive", Role::HopByHop),
            (14, b'c') => ("content-length", Role::ContentLength),
            (16, b'p') => ("proxy-connection", Role::HopByHop),
            (17, b't') => ("transfer-encoding", Role::TransferEncoding),
            _ => return Role::EndToEnd,
        };
        if token_is(name, known.as_bytes()) {
            role
        } else {
            Role::EndToEnd
        }
    }

    /// Whether a header with this role is for one hop only (RFC 9110 section 7.6.1).
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Role::Connection | Role::TransferEncoding | Role::HopByHop
        )
    }
}

/// Whether the header name `name` (a token, any case) is `known` (the same length, lower-case
/// letters and `-`). Setting bit 5 lower-cases a letter and keeps `-`; among token bytes only
/// a letter's two cases and `-` itself map onto a lower-case letter or `-` that way, so one OR
/// per byte compares exactly, eight bytes at a time.
fn token_is(name: &[u8], known: &[u8]) -> bool {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let n = known.len();
    if n < 8 || name.len() != n {
        return name.len() == n && name.iter().zip(known).all(|(&a, &b)| a | 0x20 == b);
    }
    let word = |s: &[u8], at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[at..at + 8]);
        u64::from_le_bytes(w)
    };
    // The first eight bytes and the last eight (overlapping when shorter than 16).
    (word(name, 0) | LOWER) == word(known, 0) && (word(name, n - 8) | LOWER) == word(known, n - 8)
}

/// A head kept as it was read: its bytes and where each header is, names in the case they
/// came in. Passing a response on needs no more than this; a header map is built only for
/// whoever needs one ([`RawHead::to_map`]).
pub struct RawHead {
    bytes: Bytes,
    headers: Vec<(Span, Role)>,
    /// Which roles the headers have ([`Role::bit`]): looking for an absent one reads no header.
    present: u16,
}

/// Where a head's headers are, before its bytes are split off the buffer.
pub struct Located(Vec<(Span, Role)>, u16);

/// The allocation of a head's header index, empty, kept to locate the next head in
/// ([`RawHead::locate_into`], [`RawHead::into_spare`]): a connection's requests one after the
/// other reuse one.
#[derive(Default)]
pub struct Spare(Vec<(Span, Role)>);

/// The most headers a [`Spare`] keeps room for: a head with more gives its index back to the
/// allocator.
const SPARE_HEADERS: usize = 32;

impl Spare {
    /// How many headers it has room for.
    #[cfg(test)]
    pub fn room(&self) -> usize {
        self.0.capacity()
    }
}

impl RawHead {
    /// Where `headers` (parsed by `httparse` from `buf`) are and what they mean, and which of
    /// the headers that decide framing there are: a head once its bytes are split off `buf`
    /// ([`RawHead::new`]).
    pub fn locate(buf: &[u8], headers: &[httparse::Header<'_>]) -> (Located, Seen) {
        Self::locate_into(buf, headers, Spare::default())
    }

    /// [`RawHead::locate`], the index written into `spare`'s allocation.
    pub fn locate_into(
        buf: &[u8],
        headers: &[httparse::Header<'_>],
        spare: Spare,
    ) -> (Located, Seen) {
        let mut seen = Seen::default();
        let mut present = 0;
        let mut located = spare.0;
        located.extend(headers.iter().map(|h| {
            let role = Role::of(h.name.as_bytes());
            present |= role.bit();
            match role {
                Role::TransferEncoding => seen.transfer_encoding = true,
                Role::ContentLength => seen.content_length = true,
                Role::Connection => seen.connection = true,
                Role::Expect => seen.expect = true,
                _ => {}
            }
            (span(buf, h), role)
        }));
        (Located(located, present), seen)
    }

    /// The allocation of this head's header index, for the next head to be located in; none
    /// when it is larger than most heads need.
    pub fn into_spare(self) -> Spare {
        let mut headers = self.headers;
        if headers.capacity() > SPARE_HEADERS {
            return Spare::default();
        }
        headers.clear();
        Spare(headers)
    }

    /// The head of `bytes`: the start of the buffer its headers were [located](RawHead::locate)
    /// in.
    pub fn new(bytes: Bytes, located: Located) -> RawHead {
        RawHead {
            bytes,
            headers: located.0,
            present: located.1,
        }
    }

    /// Each header: name (as it came), value, role.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8], Role)> {
        self.headers.iter().map(|&(span, role)| {
            (
                slice(&self.bytes, span.name),
                slice(&self.bytes, span.value),
                role,
            )
        })
    }

    /// Part of the head's bytes, shared.
    pub fn slice(&self, range: Range<usize>) -> Bytes {
        self.bytes.slice(range)
    }

    /// Appends the headers `keep` accepts as `name: value` CRLF lines, leaving out the names
    /// the head's own `connection` header lists (they were for the hop it came over). Lines
    /// the head has in that form, one after the other, are copied as one run.
    pub fn write_lines(&self, out: &mut Vec<u8>, mut keep: impl FnMut(&[u8], &[u8], Role) -> bool) {
        let listed = self.connection_tokens();
        let mut run = 0..0;
        for (name, value, role, line) in self.lines() {
            if listed
                .as_ref()
                .is_some_and(|l| l.iter().any(|t| t.eq_ignore_ascii_case(name)))
                || !keep(name, value, role)
            {
                continue;
            }
            match line {
                Some(line) if line.start == run.end => run.end = line.end,
                Some(line) => out.extend_from_slice(&self.bytes[std::mem::replace(&mut run, line)]),
                None => {
                    out.extend_from_slice(&self.bytes[std::mem::replace(&mut run, 0..0)]);
                    push_header(out, name, value);
                }
            }
        }
        out.extend_from_slice(&self.bytes[run]);
    }

    /// Each header as [`RawHead::iter`] gives it, with where its line is in the head's bytes
    /// when it is written `name: value` CRLF there: such lines can be copied whole.
    fn lines(&self) -> impl Iterator<Item = (&[u8], &[u8], Role, Option<Range<usize>>)> {
        self.headers.iter().map(|&(span, role)| {
            let (name_at, name_len) = (span.name.0 as usize, span.name.1 as usize);
            let (value_at, value_end) = (
                span.value.0 as usize,
                (span.value.0 + span.value.1) as usize,
            );
            let colon = name_at + name_len;
            let line = (value_at == colon + 2
                && self.bytes.get(colon..value_at) == Some(b": ")
                && self.bytes.get(value_end..value_end + 2) == Some(b"\r\n"))
            .then_some(name_at..value_end + 2);
            let name = &self.bytes[name_at..colon];
            (name, &self.bytes[value_at..value_end], role, line)
        })
    }

    /// The values of the headers with `role`.
    pub fn values(&self, role: Role) -> impl Iterator<Item = &[u8]> {
        let headers = if self.present & role.bit() != 0 {
            &self.headers[..]
        } else {
            &[]
        };
        headers
            .iter()
            .filter(move |&&(_, r)| r == role)
            .map(|&(span, _)| slice(&self.bytes, span.value))
    }

    /// The first value of the header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.get_all(name).next()
    }

    /// The values of the header `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |(n, _, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value, _)| value)
    }

    /// The first value of the header with `role` (one of the roles of a single name).
    pub fn first(&self, role: Role) -> Option<&[u8]> {
        self.values(role).next()
    }

    /// The tokens the `connection` header lists, when it has any (the names of more
    /// hop-by-hop headers).
    fn connection_tokens(&self) -> Option<Vec<&[u8]>> {
        self.first(Role::Connection)?;
        let tokens = self
            .values(Role::Connection)
            .flat_map(|v| v.split(|&b| b == b','));
        Some(
            tokens
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
                .collect(),
        )
    }

    /// The headers as a map, values sharing the head's bytes.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for &(span, _) in &self.headers {
            // `httparse` accepts the same name bytes as `HeaderName` (a test says so): no
            // name is left out.
            let Ok(name) = HeaderName::from_bytes(slice(&self.bytes, span.name)) else {
                continue;
            };
            map.append(name, value_at(&self.bytes, span.value));
        }
        map
    }
}

#[cfg(test)]
impl RawHead {
    /// The head of a complete request `text`.
    pub fn of_request(text: &'static [u8]) -> RawHead {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        assert!(req.parse(text).expect("a request head").is_complete());
        let (located, _) = RawHead::locate(text, req.headers);
        RawHead::new(Bytes::from_static(text), located)
    }
}

fn slice(bytes: &Bytes, (at, n): (u32, u32)) -> &[u8] {
    &bytes[at as usize..(at + n) as usize]
}

/// A header value cut from a head parsed by `httparse`.
fn value_at(head: &Bytes, (at, n): (u32, u32)) -> HeaderValue {
    let (at, n) = (at as usize, n as usize);
    // SAFETY: `httparse` accepted these bytes as a header value, and it accepts exactly
    // what `HeaderValue` does (tab, visible ASCII and space, and bytes from 0x80): the
    // check `from_maybe_shared` would repeat byte by byte cannot fail. Debug builds
    // check anyway.
    unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(at..at + n)) }
}

/// Appends the header line `name: value` CRLF.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal.
pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `n` in lowercase hex (a chunk size).
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A source fed from a list of reads.
    struct Reads {
        buf: BytesMut,
        reads: std::collections::VecDeque<&'static [u8]>,
    }

    impl Source for Reads {
        fn buffer(&mut self) -> &mut BytesMut {
            &mut self.buf
        }
        fn poll_fill(&mut self, _: &mut Context<'_>) -> Poll<io::Result<usize>> {
            let next = self.reads.pop_front().unwrap_or_default();
            self.buf.extend_from_slice(next);
            Poll::Ready(Ok(next.len()))
        }
    }

    fn decode(mut framing: Framing, reads: &[&'static [u8]]) -> (Vec<u8>, Result<(), String>) {
        let mut src = Reads {
            buf: BytesMut::new(),
            reads: reads.iter().copied().collect(),
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        loop {
            match poll_decode(&mut framing, &mut src, &mut cx) {
                Poll::Ready(Some(Ok(b))) => out.extend_from_slice(&b),
                Poll::Ready(Some(Err(e))) => return (out, Err(e.to_string())),
                Poll::Ready(None) => return (out, Ok(())),
                Poll::Pending => unreachable!("the test source is always ready"),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_across_reads_and_leave_what_follows() {
        let (body, end) = decode(
            Framing::Chunked(Chunk::Size),
            &[
                b"5;ext=1\r\nhel",
                b"lo\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
            ],
        );
        assert_eq!((body.as_slice(), end), (&b"hello world"[..], Ok(())));
        let (body, end) = decode(Framing::Chunked(Chunk::Size), &[b"5\r\nhel"]);
        assert_eq!(body, b"hel");
        assert!(end.unwrap_err().contains("closed"));
        let (_, end) = decode(Framing::Chunked(Chunk::Size), &[b"zz\r\n"]);
        assert!(end.unwrap_err().contains("chunk size"));
        let (_, end) = decode(Framing::Chunked(Chunk::Size), &[b"1\r\nab\r\n"]);
        assert!(end.unwrap_err().contains("CRLF"));
    }

    #[test]
    fn length_and_close_framings_end_where_they_say() {
        let (body, end) = decode(Framing::Length(4), &[b"ab", b"cdEXTRA"]);
        assert_eq!((body.as_slice(), end), (&b"abcd"[..], Ok(())));
        let (_, end) = decode(Framing::Length(4), &[b"ab"]);
        assert!(end.is_err());
        let (body, end) = decode(Framing::Close, &[b"ab", b"cd"]);
        assert_eq!((body.as_slice(), end), (&b"abcd"[..], Ok(())));
    }

    #[test]
    fn every_value_httparse_accepts_is_a_valid_header_value() {
        // What `RawHead::to_map`'s unchecked values rely on, for every byte in a value.
        // Long values too: httparse scans those with SIMD.
        let pad = [b'a'; 40];
        for (b, pad) in (0..=255u8).flat_map(|b| [(b, &pad[..1]), (b, &pad[..])]) {
            let head = [&b"HTTP/1.1 200 OK\r\nx: "[..], pad, &[b], pad, b"\r\n\r\n"].concat();
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut resp = httparse::Response::new(&mut slots);
            if let Ok(httparse::Status::Complete(_)) = resp.parse(&head) {
                for h in resp.headers.iter() {
                    assert!(
                        HeaderValue::from_bytes(h.value).is_ok(),
                        "byte {b:#x} passed httparse but is not a header value"
                    );
                }
            }
        }
    }

    #[test]
    fn every_name_httparse_accepts_is_a_valid_header_name() {
        // What `RawHead::to_map` relies on: a name passed on as it came is one a map takes.
        for b in 0..=255u8 {
            let head = [&b"HTTP/1.1 200 OK\r\nx"[..], &[b], b"y: 1\r\n\r\n"].concat();
            let mut slots = [httparse::EMPTY_HEADER; 4];
            let mut resp = httparse::Response::new(&mut slots);
            if let Ok(httparse::Status::Complete(_)) = resp.parse(&head) {
                for h in resp.headers.iter() {
                    assert!(
                        HeaderName::from_bytes(h.name.as_bytes()).is_ok(),
                        "byte {b:#x} passed httparse but is not in a header name"
                    );
                }
            }
        }
    }

    /// A head parsed the way the upstream client parses one.
    fn raw(text: &'static [u8]) -> (RawHead, Seen) {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        assert!(resp.parse(text).expect("a head").is_complete());
        let (located, seen) = RawHead::locate(text, resp.headers);
        (RawHead::new(Bytes::from_static(text), located), seen)
    }

    #[test]
    fn header_names_are_compared_without_case() {
        assert!(token_is(b"Content-Length", b"content-length"));
        assert!(token_is(b"TRANSFER-ENCODING", b"transfer-encoding"));
        assert!(token_is(b"Te", b"te"));
        assert!(!token_is(b"content-lengtx", b"content-length"));
        assert!(!token_is(b"xontent-length", b"content-length"));
        assert!(!token_is(b"content_length", b"content-length"));
        assert!(!token_is(b"content-lengths", b"content-length"));
        // No other token byte stands in for a letter or `-`.
        let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        for b in (0..=255u8).filter(|&b| tchar(b)) {
            for known in b'a'..=b'z' {
                assert_eq!(b | 0x20 == known, b.to_ascii_lowercase() == known, "{b:#x}");
            }
            assert_eq!(b | 0x20 == b'-', b == b'-', "{b:#x}");
        }
    }

    #[test]
    fn a_head_located_in_a_spare_index_reuses_its_allocation() {
        let (first, _) = raw(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
        let room = first.headers.as_ptr();
        let spare = first.into_spare();
        assert!(spare.0.is_empty());
        let text: &[u8] = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nD: 4\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut slots);
        assert!(resp.parse(text).expect("a head").is_complete());
        let (located, seen) = RawHead::locate_into(text, resp.headers, spare);
        let second = RawHead::new(Bytes::from_static(text), located);
        assert_eq!(second.headers.as_ptr(), room, "the same allocation");
        // As located afresh: only this head's headers.
        let (fresh, fresh_seen) = raw(text);
        let headers = |h: &RawHead| {
            h.iter()
                .map(|(n, v, r)| (n.to_vec(), v.to_vec(), r))
                .collect::<Vec<_>>()
        };
        assert_eq!(headers(&second), headers(&fresh));
        assert_eq!(second.present, fresh.present);
        assert!(seen.content_length && fresh_seen.content_length && !seen.connection);
        // A head with many headers keeps no index back.
        let many: String = (0..40).map(|i| format!("x-{i}: v\r\n")).collect();
        let text: &'static [u8] = format!("HTTP/1.1 200 OK\r\n{many}\r\n").leak().as_bytes();
        assert_eq!(raw(text).0.into_spare().0.capacity(), 0);
    }

    #[test]
    fn raw_heads_keep_names_as_sent_and_know_their_roles() {
        let (head, seen) = raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\
            CONNECTION: keep-alive, x-hop\r\nTransfer-Encoding: gzip\r\n\
            transfer-encoding: chunked\r\nDate: today\r\nTE: trailers\r\n\
            Keep-Alive: 5\r\nX-Hop: 1\r\nRetry-After: 3\r\n\r\n");
        assert!(seen.connection && seen.transfer_encoding && !seen.content_length);
        let roles: Vec<(&[u8], Role)> = head.iter().map(|(n, _, r)| (n, r)).collect();
        assert_eq!(
            roles,
            [
                (&b"Content-Type"[..], Role::EndToEnd),
                (b"CONNECTION", Role::Connection),
                (b"Transfer-Encoding", Role::TransferEncoding),
                (b"transfer-encoding", Role::TransferEncoding),
                (b"Date", Role::Date),
                (b"TE", Role::HopByHop),
                (b"Keep-Alive", Role::HopByHop),
                (b"X-Hop", Role::EndToEnd),
                (b"Retry-After", Role::EndToEnd),
            ]
        );
        assert_eq!(head.get("retry-after"), Some(&b"3"[..]));
        assert_eq!(head.get("x-none"), None);
        assert!(lists(head.values(Role::Connection), "X-HOP"));
        assert_eq!(
            last_coding_is_chunked(head.values(Role::TransferEncoding)),
            Some(true)
        );
        let codings: Vec<_> = head.values(Role::TransferEncoding).collect();
        assert_eq!(codings, [&b"gzip"[..], b"chunked"]);
        // Roles no header has give nothing.
        assert_eq!(head.values(Role::ContentLength).count(), 0);
        assert_eq!(head.first(Role::RequestId), None);
        // The map has every header, names lower-cased, repeated ones in order.
        let map = head.to_map();
        assert_eq!(map.len(), 9);
        assert_eq!(map["content-type"], "text/plain");
        let codings: Vec<_> = map.get_all("transfer-encoding").iter().collect();
        assert_eq!(codings, ["gzip", "chunked"]);
        assert_eq!(Role::of(b"Proxy-Connection"), Role::HopByHop);
        assert_eq!(Role::of(b"Upgrade"), Role::HopByHop);
        assert_eq!(Role::of(b"content-LENGTH"), Role::ContentLength);
        assert_eq!(Role::of(b"dates"), Role::EndToEnd);
    }

    #[test]
    fn numbers_are_written_without_formatting() {
        let mut out = Vec::new();
        for n in [0, 7, 10, 65536, u64::MAX] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
            out.clear();
            push_hex(&mut out, n);
            assert_eq!(out, format!("{n:x}").as_bytes());
        }
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"FF ; name=value"), Some(255));
        assert_eq!(chunk_size(b"0"), Some(0));
        assert_eq!(chunk_size(b""), None);
        assert_eq!(chunk_size(b"xyz"), None);
        assert_eq!(chunk_size(b"11111111111111111"), None);
    }

    #[test]
    fn framing_headers_are_read_strictly() {
        let v = |values: &[&'static str]| values.iter().map(|v| v.as_bytes()).collect::<Vec<_>>();
        let chunked = |values: &[&'static str]| last_coding_is_chunked(v(values).into_iter());
        let length = |values: &[&'static str]| length_of(v(values).into_iter());
        assert_eq!(chunked(&[]), None);
        assert_eq!(length(&[]), Ok(None));
        assert_eq!(chunked(&["gzip, chunked"]), Some(true));
        assert_eq!(chunked(&["gzip, chunked", "gzip"]), Some(false));
        assert_eq!(
            chunked(&[" , "]),
            Some(false),
            "present but naming no coding"
        );
        assert_eq!(length(&["12", " 12"]), Ok(Some(12)));
        assert!(length(&["12", "13"]).is_err());
        assert!(length(&["+5"]).is_err());
        assert!(length(&["99999999999999999999"]).is_err());
        let connection = v(&["Keep-Alive, Upgrade"]);
        assert!(lists(connection.iter().copied(), "upgrade"));
        assert!(!lists(connection.iter().copied(), "close"));
    }
}
