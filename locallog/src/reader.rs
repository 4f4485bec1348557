//! Sequential reader of the local log from an offset, verifying every frame.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::writer::{is_unwritten, read_full};
use super::{HEADER_LEN, LogError, MAX_RECORD_BYTES, checksum, list_segments};

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub offset: u64,
    pub data: Bytes,
}

pub struct LogReader {
    dir: PathBuf,
    segment: Option<OpenSegment>,
    next_offset: u64,
}

struct OpenSegment {
    path: PathBuf,
    reader: BufReader<File>,
    position: u64,
}

enum Frame {
    Entry(LogEntry),
    /// Not a whole frame yet (the end of the written data).
    End,
}

impl LogReader {
    /// Positions a reader at record `from`.
    pub fn open(dir: &Path, from: u64) -> Result<LogReader, LogError> {
        let segments = list_segments(dir)?;
        let first = segments.first().map(|(b, _)| *b).unwrap_or(0);
        if from < first {
            return Err(LogError::OffsetRetained { requested: from, first });
        }
        let mut reader = LogReader { dir: dir.to_owned(), segment: None, next_offset: from };
        // The segment holding `from` is the last one whose base is <= from.
        if let Some((base, path)) = segments.iter().rev().find(|(b, _)| *b <= from) {
            reader.next_offset = *base;
            reader.segment = Some(OpenSegment::open(path)?);
            while reader.next_offset < from {
                match reader.read_frame(true)? {
                    Frame::Entry(_) => {}
                    Frame::End => break,
                }
            }
        }
        if reader.next_offset != from {
            return Err(LogError::OffsetBeyondEnd { requested: from, end: reader.next_offset });
        }
        // Skipping forward read ahead past `from`: those bytes need not be durable yet.
        reader.drop_read_ahead()?;
        Ok(reader)
    }

    /// The offset of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next_offset
    }

    /// Reads up to `max` records with offsets below `upto` (the durable end; `u64::MAX` for everything that
    /// is whole on disk, as after a restart).
    pub fn read_batch(&mut self, max: usize, upto: u64) -> Result<Vec<LogEntry>, LogError> {
        self.read_batch_bytes(max, usize::MAX, upto)
    }

    /// [`read_batch`](Self::read_batch), also stopping once the records read hold `max_bytes` (at least
    /// one record is read).
    pub fn read_batch_bytes(&mut self, max: usize, max_bytes: usize, upto: u64) -> Result<Vec<LogEntry>, LogError> {
        let out = self.read_frames(max, max_bytes, upto);
        self.drop_read_ahead()?;
        out
    }

    /// Bytes read ahead past what was returned need not be durable: a failed write may have left them,
    /// and the writer's repair cuts them off and writes other records there. Never keep them buffered.
    fn drop_read_ahead(&mut self) -> Result<(), LogError> {
        if let Some(seg) = self.segment.as_mut()
            && !seg.reader.buffer().is_empty()
        {
            seg.reader.seek(SeekFrom::Start(seg.position))?;
        }
        Ok(())
    }

    fn read_frames(&mut self, max: usize, max_bytes: usize, upto: u64) -> Result<Vec<LogEntry>, LogError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max && bytes < max_bytes && self.next_offset < upto {
            if self.segment.is_none() && !self.advance_segment()? {
                break;
            }
            let frame = match self.read_frame(false) {
                // Reading all that is whole: the last segment's records end at its first bad frame (one
                // being written, or torn by a crash, over the zeros ahead), as recovery would cut it.
                Err(LogError::Corrupt { .. }) if upto == u64::MAX && self.in_last_segment()? => {
                    if let Some(seg) = self.segment.as_mut() {
                        seg.reader.seek(SeekFrom::Start(seg.position))?;
                    }
                    break;
                }
                frame => frame?,
            };
            match frame {
                Frame::Entry(e) => {
                    bytes = bytes.saturating_add(e.data.len());
                    out.push(e)
                }
                Frame::End => {
                    if !self.advance_segment()? {
                        if upto != u64::MAX {
                            return Err(self.corrupt_here("durable records are missing"));
                        }
                        // A segment's records end (at its file's end, or where zeros begin) only where
                        // the next segment begins, if there is one.
                        if list_segments(&self.dir)?.iter().any(|(base, _)| *base > self.next_offset) {
                            return Err(self.corrupt_here("records are missing before a later segment"));
                        }
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Corruption at the open segment's position.
    fn corrupt_here(&self, problem: &'static str) -> LogError {
        LogError::Corrupt {
            segment: self.segment.as_ref().map(|s| s.path.clone()).unwrap_or_default(),
            position: self.segment.as_ref().map_or(0, |s| s.position),
            problem,
        }
    }

    /// Whether the open segment is the log's last.
    fn in_last_segment(&self) -> Result<bool, LogError> {
        let Some(seg) = self.segment.as_ref() else { return Ok(false) };
        Ok(list_segments(&self.dir)?.last().is_some_and(|(_, path)| *path == seg.path))
    }

    /// Moves to the segment starting at `next_offset`, if there is one.
    fn advance_segment(&mut self) -> Result<bool, LogError> {
        let path = self.dir.join(super::segment_name(self.next_offset));
        match OpenSegment::open(&path) {
            Ok(seg) => {
                self.segment = Some(seg);
                Ok(true)
            }
            Err(LogError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read_frame(&mut self, skip_payload: bool) -> Result<Frame, LogError> {
        let Some(seg) = self.segment.as_mut() else { return Ok(Frame::End) };
        let corrupt = |seg: &OpenSegment, problem| LogError::Corrupt {
            segment: seg.path.clone(),
            position: seg.position,
            problem,
        };
        let mut header = [0u8; HEADER_LEN];
        let n = read_full(&mut seg.reader, &mut header)?;
        // The end of the records: the end of the file, or the zeros the writer wrote ahead of them.
        if n < HEADER_LEN || is_unwritten(&header) {
            seg.reader.seek(SeekFrom::Start(seg.position))?;
            return Ok(Frame::End);
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let offset = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        if len > MAX_RECORD_BYTES {
            return Err(corrupt(seg, "frame length out of range"));
        }
        if offset != self.next_offset {
            return Err(corrupt(seg, "offset out of sequence"));
        }
        if skip_payload {
            // Offsets are checked; checksums are checked when the payload is actually returned.
            let end = seg.position + (HEADER_LEN + len) as u64;
            let file_len = seg.reader.get_ref().metadata()?.len();
            if end > file_len {
                seg.reader.seek(SeekFrom::Start(seg.position))?;
                return Ok(Frame::End);
            }
            seg.reader.seek_relative(len as i64)?;
            seg.position = end;
            self.next_offset += 1;
            return Ok(Frame::Entry(LogEntry { offset, data: Bytes::new() }));
        }
        let mut payload = vec![0u8; len];
        if read_full(&mut seg.reader, &mut payload)? < len {
            seg.reader.seek(SeekFrom::Start(seg.position))?;
            return Ok(Frame::End);
        }
        if checksum(offset, &payload) != crc {
            return Err(corrupt(seg, "checksum mismatch"));
        }
        seg.position += (HEADER_LEN + len) as u64;
        self.next_offset += 1;
        Ok(Frame::Entry(LogEntry { offset, data: Bytes::from(payload) }))
    }
}

impl OpenSegment {
    fn open(path: &Path) -> Result<OpenSegment, LogError> {
        let file = File::open(path)?;
        Ok(OpenSegment { path: path.to_owned(), reader: BufReader::with_capacity(256 << 10, file), position: 0 })
    }
}
