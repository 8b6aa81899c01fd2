//! The CRI container log format the kubelet writes and `kubectl logs`
//! reads: one record a line, `<RFC3339Nano> <stream> <F|P> <text>`, where
//! `P` marks a partial line (split at 16 KiB) and `F` the line's end.

use std::io::Write;

/// Longest piece of a line in one record.
pub const MAX_RECORD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Writes the records of one chunk of a stream's bytes. `pending` carries
/// an unfinished line between chunks; call [`flush`] at the end.
pub fn write_records(
    out: &mut impl Write,
    stream: Stream,
    pending: &mut Vec<u8>,
    chunk: &[u8],
    now: &str,
) -> std::io::Result<()> {
    let mut rest = chunk;
    while let Some(i) = rest.iter().position(|b| *b == b'\n') {
        pending.extend_from_slice(&rest[..i]);
        emit(out, stream, pending, now, true)?;
        pending.clear();
        rest = &rest[i + 1..];
    }
    pending.extend_from_slice(rest);
    while pending.len() >= MAX_RECORD {
        let tail = pending.split_off(MAX_RECORD);
        emit(out, stream, pending, now, false)?;
        *pending = tail;
    }
    Ok(())
}

/// Ends a stream: an unfinished last line is written as a full one.
pub fn flush(
    out: &mut impl Write,
    stream: Stream,
    pending: &mut Vec<u8>,
    now: &str,
) -> std::io::Result<()> {
    if !pending.is_empty() {
        emit(out, stream, pending, now, true)?;
        pending.clear();
    }
    Ok(())
}

fn emit(
    out: &mut impl Write,
    stream: Stream,
    text: &[u8],
    now: &str,
    full: bool,
) -> std::io::Result<()> {
    let mut rec = Vec::with_capacity(text.len() + 48);
    rec.extend_from_slice(now.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_str().as_bytes());
    rec.extend_from_slice(if full { b" F " } else { b" P " });
    rec.extend_from_slice(text);
    rec.push(b'\n');
    // One write a record: records of the two streams never interleave.
    out.write_all(&rec)
}

/// The current time as the format wants it.
pub fn now() -> String {
    time_of(time::OffsetDateTime::now_utc())
}

/// A time as the format writes it: UTC, always nine fractional digits, so
/// that text order is time order.
pub fn time_of(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub full: bool,
    pub text: &'a [u8],
}

pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(Record {
        time,
        stream,
        full: tag != b"P",
        text,
    })
}

/// The container's output from a log file's records: partial records are
/// joined, every full one ends with a newline.
pub fn render(records: &[u8], out: &mut impl Write) -> std::io::Result<()> {
    for line in records.split(|b| *b == b'\n') {
        if let Some(r) = parse(line) {
            out.write_all(r.text)?;
            if r.full {
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_partials_and_flush() {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        let t = "2026-01-01T00:00:00.000000000Z";
        write_records(&mut out, Stream::Stdout, &mut pending, b"hello\nwor", t).unwrap();
        write_records(&mut out, Stream::Stdout, &mut pending, b"ld\n\nlast", t).unwrap();
        flush(&mut out, Stream::Stdout, &mut pending, t).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            format!("{t} stdout F hello\n{t} stdout F world\n{t} stdout F \n{t} stdout F last\n")
        );
        let mut plain = Vec::new();
        render(&out, &mut plain).unwrap();
        assert_eq!(plain, b"hello\nworld\n\nlast\n");
    }

    #[test]
    fn long_lines_split_into_partials_and_join_back() {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        let line = vec![b'x'; MAX_RECORD * 2 + 10];
        write_records(&mut out, Stream::Stderr, &mut pending, &line, "T").unwrap();
        write_records(&mut out, Stream::Stderr, &mut pending, b"\n", "T").unwrap();
        let recs: Vec<_> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(recs.len(), 3);
        assert!(recs[0].starts_with(b"T stderr P "));
        assert!(recs[2].starts_with(b"T stderr F "));
        let mut plain = Vec::new();
        render(&out, &mut plain).unwrap();
        assert_eq!(plain.len(), line.len() + 1);
    }

    #[test]
    fn now_is_rfc3339_nano() {
        let n = now();
        assert_eq!(n.len(), 30, "{n}");
        assert!(n.ends_with('Z') && n.as_bytes()[10] == b'T');
    }
}
