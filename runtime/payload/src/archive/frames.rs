//! The payload's zstd frames, and the threads that decode them.
//!
//! The packager cuts the tar into frames of [`FRAME_CONTENT`] bytes (the last one shorter),
//! each compressed on its own with its content size in its header. Any zstd decoder reads
//! the frames one after the other as one stream (so `zstd -d` and payload 1.0 readers still
//! work); this reader also finds them with `ZSTD_findFrameCompressedSize`, which only walks
//! block headers, and decodes them on several threads at once. opencode 1.18 is 185 MB, and
//! decoding it as one frame on one core took 0.42 s of the first start's extraction on the
//! 2-core build machine, a third of a warm start; 32 MiB frames cost 1.6% more payload
//! (24.8% of raw as one frame, 25.2% in 32 MiB frames; 25.1% in four frames of 46 MB).
//!
//! Either way the decoded bytes reach the tar reader through one [`Pipe`], in order.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread::{Scope, ScopedJoinHandle};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// zstd window the packager writes with (`--long=27`, 128 MiB) and the largest the
/// streaming reader accepts. A frame's window never exceeds its content, so in 32 MiB
/// frames this is an upper bound; it is what a one-frame payload of the 1.0 packagers used.
/// 27 is the largest window the zstd command-line tool decodes without a flag, so `zstd -d`
/// can still inspect a payload by hand.
pub const ZSTD_WINDOW_LOG: u32 = 27;

/// Tar bytes per frame. 32 MiB: opencode 1.18 (185 MB) makes six frames, enough to keep
/// every core of a small machine busy, while each frame's window is large enough that the
/// payload grows by only 1.6% against one frame with a 128 MiB window (see the module docs).
pub const FRAME_CONTENT: usize = 32 << 20;

/// The largest frame the parallel reader decodes: every frame in flight is a buffer of its
/// content size. A payload with larger frames, or frames without a content size (1.0
/// packagers), is read as one stream with [`ZSTD_WINDOW_LOG`]'s bound instead.
const MAX_PARALLEL_FRAME: u64 = 2 * FRAME_CONTENT as u64;

/// At most this many decoding threads: with the writing thread, four cores' worth. More
/// would buy little (writing and hashing the files take a core of their own) and each one
/// holds a frame's buffer.
const MAX_DECODERS: usize = 4;

/// Size of the decoded chunks the streaming reader passes to the writing thread, and
/// (below) how many may wait: together half a megabyte, so that a chunk is still in cache
/// when the writer copies it out. On a 2-core VM whose memory streams at under 1 GB/s,
/// 128 KiB x 4 took about 7% less CPU than 256 KiB x 8 for the real 141 MB payload.
pub(super) const PIPE_CHUNK: usize = 128 * 1024;
/// Decoded chunks that may wait for the writing thread: enough to ride out a slow `write`.
pub(super) const PIPE_DEPTH: usize = 4;

/// Compresses a tar in frames of [`FRAME_CONTENT`] bytes at `level` with the long window,
/// on `workers` threads (at least one).
pub fn compress(tar: &[u8], out: impl Write, level: i32, workers: u32) -> Result<()> {
    compress_in_frames(tar, out, level, workers, FRAME_CONTENT)
}

/// [`compress`] with another frame size: tests and fuzzing use small frames to reach the
/// parallel reader with small inputs.
pub fn compress_in_frames(
    tar: &[u8],
    mut out: impl Write,
    level: i32,
    workers: u32,
    frame_content: usize,
) -> Result<()> {
    assert!(frame_content > 0, "frames hold at least one byte");
    let mut chunks = Vec::new();
    let mut rest = tar;
    for len in frame_lengths(tar.len(), frame_content) {
        let (chunk, after) = rest.split_at(len);
        chunks.push(chunk);
        rest = after;
    }
    let frames: Vec<OnceLock<io::Result<Vec<u8>>>> =
        chunks.iter().map(|_| OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    let threads = (workers.max(1) as usize).min(chunks.len());
    let spawned: Vec<io::Result<()>> = std::thread::scope(|scope| {
        (0..threads)
            .map(|_| {
                std::thread::Builder::new()
                    .name("payload-compress".into())
                    .spawn_scoped(scope, || {
                        // One context per thread, reused for each frame it takes.
                        let mut compressor = None;
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            let Some(chunk) = chunks.get(index) else {
                                break;
                            };
                            let frame = compress_frame(&mut compressor, level, chunk);
                            let _ = frames[index].set(frame);
                        }
                    })
                    .map(drop)
            })
            .collect()
    });
    // Threads that did start took every frame between them; none starting is an error.
    if spawned.iter().all(|s| s.is_err()) {
        let e = spawned
            .into_iter()
            .find_map(|s| s.err())
            .expect("at least one thread");
        return Err(Error::io("start a compression thread", e));
    }
    for frame in frames {
        let frame = frame
            .into_inner()
            .expect("every frame was taken by a thread")
            .map_err(|e| Error::io("compress the archive", e))?;
        out.write_all(&frame)
            .map_err(|e| Error::io("write the payload", e))?;
    }
    Ok(())
}

/// The lengths of the frames a tar of `total` bytes is cut into: frames of `frame` bytes,
/// except that the first ones grow from a 32nd of that to half of it, and the last ones
/// shrink likewise. Small frames first let the writing thread start after a millisecond
/// instead of after a whole frame, and small frames last leave it little to do once the
/// last decoder is done; in between, every thread is busy anyway.
fn frame_lengths(total: usize, frame: usize) -> Vec<usize> {
    // An empty tar is still one (empty) frame: a payload is never zero bytes.
    if total == 0 {
        return vec![0];
    }
    let ramp: Vec<usize> = (1..=5)
        .rev()
        .map(|k| frame >> k)
        .filter(|&n| n > 0)
        .collect();
    let ramp_total: usize = ramp.iter().sum();
    let plain = |len: usize| {
        let mut lengths = vec![frame; len / frame];
        if !len.is_multiple_of(frame) {
            lengths.push(len % frame);
        }
        lengths
    };
    if total <= 2 * ramp_total + frame {
        return plain(total);
    }
    let mut lengths = ramp.clone();
    lengths.extend(plain(total - 2 * ramp_total));
    lengths.extend(ramp.iter().rev());
    lengths
}

/// One frame: long-distance matching with the 128 MiB window (zstd shrinks it to the
/// frame's size), the content size in the header, no zstd checksum (the trailer hashes the
/// whole payload).
fn compress_frame(
    compressor: &mut Option<zstd::bulk::Compressor<'static>>,
    level: i32,
    chunk: &[u8],
) -> io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let compressor = match compressor {
        Some(compressor) => compressor,
        None => {
            let mut new = zstd::bulk::Compressor::new(level)?;
            new.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
            new.set_parameter(CParameter::WindowLog(ZSTD_WINDOW_LOG))?;
            new.set_parameter(CParameter::ChecksumFlag(false))?;
            new.set_parameter(CParameter::ContentSizeFlag(true))?;
            compressor.insert(new)
        }
    };
    compressor.compress(chunk)
}

/// A decoded piece of the tar, numbered in stream order, or the error that ends the stream.
type Chunk = (usize, io::Result<Vec<u8>>);

/// One frame of a payload that can be decoded in parallel.
struct Frame<'a> {
    bytes: &'a [u8],
    content: usize,
}

/// The payload's frames, if it can be decoded in parallel: more than one frame, each with
/// its content size, none larger than [`MAX_PARALLEL_FRAME`]. Anything else (one frame, a
/// frame without a size, damage) is left to the streaming reader, which reports damage.
fn parallel_frames(compressed: &[u8]) -> Option<Vec<Frame<'_>>> {
    let mut frames = Vec::new();
    let mut rest = compressed;
    while !rest.is_empty() {
        let len = zstd::zstd_safe::find_frame_compressed_size(rest).ok()?;
        let (bytes, after) = rest.split_at_checked(len)?;
        let content = zstd::zstd_safe::get_frame_content_size(bytes).ok()??;
        if content > MAX_PARALLEL_FRAME || len == 0 {
            return None;
        }
        frames.push(Frame {
            bytes,
            content: content as usize,
        });
        rest = after;
    }
    (frames.len() > 1).then_some(frames)
}

/// How many frames the parallel reader would decode `compressed` in (0: it would not).
#[cfg(test)]
pub(super) fn parallel_frames_for_tests(compressed: &[u8]) -> usize {
    parallel_frames(compressed).map_or(0, |frames| frames.len())
}

/// The threads decoding one payload.
pub(super) struct Decoding<'scope> {
    /// The streaming decoder (which hashes the payload when done), or the frame decoders.
    decoders: Vec<ScopedJoinHandle<'scope, Result<Option<[u8; 32]>>>>,
    /// With frame decoders: the thread hashing the payload beside them.
    hasher: Option<ScopedJoinHandle<'scope, [u8; 32]>>,
}

impl Decoding<'_> {
    /// Waits for every thread; returns the payload's SHA-256, or `None` if decoding stopped
    /// early (a decoding error, which the reader saw, or the reader went away).
    pub(super) fn join(self) -> Result<Option<[u8; 32]>> {
        let mut digest = None;
        let mut first_error = None;
        for decoder in self.decoders {
            match decoder.join() {
                Ok(Ok(Some(d))) => digest = Some(d),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        if let Some(hasher) = self.hasher {
            match hasher.join() {
                Ok(d) => digest = Some(d),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(digest),
        }
    }
}

/// Starts decoding `compressed` on threads of `scope`: its frames in parallel when
/// [`parallel_frames`] allows it, otherwise as one stream. Returns the pipe the tar bytes
/// arrive through, in order, and the threads.
pub(super) fn start<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    compressed: &'env [u8],
) -> Result<(Pipe, Decoding<'scope>)> {
    let parallel = parallel_frames(compressed).map(|frames| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let decoders = cores.clamp(1, MAX_DECODERS).min(frames.len());
        (frames, decoders)
    });
    let Some((frames, decoders)) = parallel else {
        let (full, full_rx) = mpsc::sync_channel(PIPE_DEPTH);
        let (empty_tx, empty) = mpsc::channel();
        let decoder = std::thread::Builder::new()
            .name("payload-decode".into())
            .spawn_scoped(scope, move || decode_stream(compressed, full, &empty))
            .map_err(|e| Error::io("start the decoding thread", e))?;
        let decoding = Decoding {
            decoders: vec![decoder],
            hasher: None,
        };
        return Ok((Pipe::new(full_rx, empty_tx, None), decoding));
    };

    // One buffer per decoder plus one being read: the bound on decoded bytes in memory.
    let (empty_tx, empty) = mpsc::channel();
    for _ in 0..=decoders {
        let _ = empty_tx.send(Vec::new());
    }
    let empty = Arc::new(Mutex::new(empty));
    let frames = Arc::new(frames);
    let next = Arc::new(AtomicUsize::new(0));
    let count = frames.len();
    let (full, full_rx) = mpsc::sync_channel(count);
    let mut decoding = Decoding {
        decoders: Vec::with_capacity(decoders),
        hasher: None,
    };
    for _ in 0..decoders {
        let (frames, next, empty, full) =
            (frames.clone(), next.clone(), empty.clone(), full.clone());
        let decoder = std::thread::Builder::new()
            .name("payload-decode".into())
            .spawn_scoped(scope, move || decode_frames(&frames, &next, &empty, full))
            .map_err(|e| Error::io("start a decoding thread", e))?;
        decoding.decoders.push(decoder);
    }
    decoding.hasher = Some(
        std::thread::Builder::new()
            .name("payload-hash".into())
            .spawn_scoped(scope, move || Sha256::digest(compressed).into())
            .map_err(|e| Error::io("start the hashing thread", e))?,
    );
    Ok((Pipe::new(full_rx, empty_tx, Some(count)), decoding))
}

/// A frame decoder: takes a free buffer, then the next frame nobody has taken, decodes it
/// and sends it on. Taking the buffer first means every taken frame is being decoded, so
/// the reader, which consumes frames in order and frees their buffers, never waits on a
/// frame nobody can decode. Returns `None`: the payload's hash is the hasher's job.
fn decode_frames(
    frames: &[Frame<'_>],
    next: &AtomicUsize,
    empty: &Mutex<mpsc::Receiver<Vec<u8>>>,
    full: mpsc::SyncSender<Chunk>,
) -> Result<Option<[u8; 32]>> {
    let mut decompressor =
        zstd::bulk::Decompressor::new().map_err(|e| Error::io("start zstd", e))?;
    loop {
        let buffer = empty.lock().unwrap_or_else(|p| p.into_inner()).recv();
        // The reader went away (done or refusing): nothing more to do.
        let Ok(mut buffer) = buffer else {
            return Ok(None);
        };
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(frame) = frames.get(index) else {
            return Ok(None);
        };
        buffer.clear();
        buffer.reserve_exact(frame.content);
        advise_huge_pages(&mut buffer);
        // zstd checks that the frame decodes to exactly the size its header declares.
        let decoded = decompressor
            .decompress_to_buffer(frame.bytes, &mut buffer)
            .map(|_| buffer);
        let failed = decoded.is_err();
        if full.send((index, decoded)).is_err() || failed {
            return Ok(None);
        }
    }
}

/// Asks Linux to back a decoding buffer with 2 MiB pages where it can: a frame's matches
/// reach back up to 32 MiB, and with 4 KiB pages the decoder spends its time in TLB misses
/// and page faults.
#[cfg(target_os = "linux")]
fn advise_huge_pages(buffer: &mut Vec<u8>) {
    const HUGE: usize = 2 << 20;
    let start = buffer.as_mut_ptr() as usize;
    let end = start + buffer.capacity();
    let aligned = start.next_multiple_of(HUGE);
    if end > aligned + HUGE {
        let len = (end - aligned) / HUGE * HUGE;
        // SAFETY: the range lies within the buffer's own allocation; MADV_HUGEPAGE only
        // changes how the kernel backs it, never its contents. A refusal changes nothing.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_buffer: &mut Vec<u8>) {}

/// The streaming decoder: decodes `compressed` into chunks (reusing those handed back on
/// `empty`) and sends them on `full`, a decoding error as the last message. Then, with the
/// queue closed, hashes `compressed`. Returns its SHA-256, or `None` if decoding stopped
/// early (a decoding error, or the reader went away).
fn decode_stream(
    compressed: &[u8],
    full: mpsc::SyncSender<Chunk>,
    empty: &mpsc::Receiver<Vec<u8>>,
) -> Result<Option<[u8; 32]>> {
    // Straight from the slice: no buffer between the mapped payload and the decoder.
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| Error::io("start zstd", e))?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG)
        .map_err(|e| Error::io("configure zstd", e))?;
    for index in 0.. {
        let mut chunk = empty.try_recv().unwrap_or_default();
        chunk.resize(PIPE_CHUNK, 0);
        let mut filled = 0;
        let mut end = false;
        while filled < PIPE_CHUNK {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => {
                    end = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Deliver what was decoded before the error, then the error.
                    chunk.truncate(filled);
                    let _ = full.send((index, Ok(chunk)));
                    let _ = full.send((index + 1, Err(e)));
                    return Ok(None);
                }
            }
        }
        chunk.truncate(filled);
        if full.send((index, Ok(chunk))).is_err() {
            return Ok(None);
        }
        if end {
            break;
        }
    }
    // The end of the stream for the reader, which can finish its last file meanwhile.
    drop(full);
    // The decoder looks for further frames until its input ends, so reaching the end means
    // every byte was part of a valid frame; check it all the same.
    if !decoder.finish().is_empty() {
        return Err(Error::corrupt(
            "payload",
            "bytes left over after the zstd frames",
        ));
    }
    Ok(Some(Sha256::digest(compressed).into()))
}

/// The reading end of the decoders' queue, as a `Read` of the tar stream: puts chunks back
/// in stream order and hands the used ones back for reuse. The end of the queue (every
/// decoder dropped its sender) is the end of the stream, unless frames are missing.
pub(super) struct Pipe {
    full: mpsc::Receiver<Chunk>,
    empty: mpsc::Sender<Vec<u8>>,
    /// Chunks that arrived ahead of their turn.
    waiting: BTreeMap<usize, io::Result<Vec<u8>>>,
    /// The number of the chunk to read next.
    next: usize,
    /// How many chunks the stream has, when known (frames).
    expected: Option<usize>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Pipe {
    fn new(
        full: mpsc::Receiver<Chunk>,
        empty: mpsc::Sender<Vec<u8>>,
        expected: Option<usize>,
    ) -> Self {
        Self {
            full,
            empty,
            waiting: BTreeMap::new(),
            next: 0,
            expected,
            chunk: Vec::new(),
            pos: 0,
        }
    }

    /// The next chunk in stream order; `None` at the end of the stream.
    fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if let Some(chunk) = self.waiting.remove(&self.next) {
            self.next += 1;
            return chunk.map(Some);
        }
        loop {
            match self.full.recv() {
                Ok((index, chunk)) if index == self.next => {
                    self.next += 1;
                    return chunk.map(Some);
                }
                Ok((index, chunk)) => {
                    self.waiting.insert(index, chunk);
                }
                Err(mpsc::RecvError) => {
                    return match self.expected {
                        Some(count) if self.next < count => Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("frame {} of {count} was never decoded", self.next + 1),
                        )),
                        _ => Ok(None),
                    };
                }
            }
        }
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            let used = std::mem::take(&mut self.chunk);
            if used.capacity() > 0 {
                // The decoders may already be gone; then the chunk is simply freed.
                let _ = self.empty.send(used);
            }
            self.pos = 0;
            match self.next_chunk()? {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
