//! Where log lines go: a buffer that a thread of its own writes out, so that a request
//! thread never makes a system call (or waits on a slow reader of stderr) for its access
//! log line. Under load one `write` carries hundreds of lines.
//!
//! A line appears at once when the sink is idle; under load, within `PAUSE`. If the
//! reader of stderr stalls and `MAX_BUFFERED` fills, lines are dropped rather than
//! blocking requests, and the sink says how many it dropped. `stop` (or dropping the
//! sink) writes out everything before it returns; lines logged after that are written
//! straight through.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tracing_subscriber::fmt::MakeWriter;

/// How long the writing thread lets lines gather after a write: under load, the longest
/// a line waits, and one write per pause at most.
const PAUSE: Duration = Duration::from_millis(2);
/// Lines waiting beyond this are dropped (and counted): a stalled stderr must not take
/// the service's memory.
const MAX_BUFFERED: usize = 4 << 20;

pub struct LogSink<W: Write + Send + 'static> {
    shared: Arc<Shared<W>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared<W> {
    state: Mutex<State>,
    wake: Condvar,
    out: Mutex<W>,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    dropped: u64,
    /// `stop` was called: the writing thread writes out what is left, then ends.
    stopping: bool,
    /// The writing thread has ended: lines go straight to the output.
    finished: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a line was appended leaves whole bytes behind; logging goes on.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LogSink<std::io::Stderr> {
    pub fn stderr() -> std::io::Result<Self> {
        Self::start(std::io::stderr())
    }
}

impl<W: Write + Send + 'static> LogSink<W> {
    pub fn start(out: W) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            out: Mutex::new(out),
        });
        let writing = shared.clone();
        let thread = std::thread::Builder::new()
            .name("otpd-log".into())
            .spawn(move || writing.write_out())?;
        Ok(LogSink {
            shared,
            thread: Some(thread),
        })
    }

    /// What `tracing_subscriber::fmt` writes each formatted line to.
    pub fn writer(&self) -> LineWriter<W> {
        LineWriter(self.shared.clone())
    }

    /// Writes out every line logged so far; later lines are written straight through.
    pub fn stop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<W: Write + Send + 'static> Drop for LogSink<W> {
    fn drop(&mut self) {
        self.stop();
    }
}

impl<W: Write + Send> Shared<W> {
    fn append(&self, line: &[u8]) {
        let mut state = lock(&self.state);
        if state.finished {
            drop(state);
            let _ = lock(&self.out).write_all(line);
            return;
        }
        if state.lines.len() + line.len() > MAX_BUFFERED {
            state.dropped += 1;
            return;
        }
        let was_idle = state.lines.is_empty();
        state.lines.extend_from_slice(line);
        drop(state);
        if was_idle {
            self.wake.notify_one();
        }
    }

    /// The writing thread. Lines go out in the order they were appended: a batch is
    /// written before the next is taken, and the last one while the state is held, so
    /// that no line written straight through afterwards can overtake it.
    fn write_out(&self) {
        let mut batch = Vec::new();
        loop {
            let dropped = {
                let mut state = lock(&self.state);
                while state.lines.is_empty() && state.dropped == 0 && !state.stopping {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.stopping {
                    let (lines, dropped) = (std::mem::take(&mut state.lines), state.dropped);
                    emit(&mut *lock(&self.out), dropped, &lines);
                    state.finished = true;
                    return;
                }
                batch.clear();
                std::mem::swap(&mut batch, &mut state.lines);
                std::mem::take(&mut state.dropped)
            };
            emit(&mut *lock(&self.out), dropped, &batch);
            std::thread::sleep(PAUSE);
        }
    }
}

fn emit(out: &mut impl Write, dropped: u64, lines: &[u8]) {
    // Nowhere is left to report a failed write of the log itself.
    if dropped > 0 {
        let _ = writeln!(
            out,
            "otpd: {dropped} log lines were dropped: stderr did not keep up"
        );
    }
    let _ = out.write_all(lines);
    let _ = out.flush();
}

/// One formatted line at a time, appended whole (the formatter writes each event with
/// one `write_all`, so lines of different threads never interleave).
pub struct LineWriter<W>(Arc<Shared<W>>);

impl<W: Write + Send> Write for &LineWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Each event borrows the writer: no reference count is touched per line.
impl<'a, W: Write + Send + 'static> MakeWriter<'a> for LineWriter<W> {
    type Writer = &'a LineWriter<W>;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// The access log's line, formatted here rather than by `tracing`: through its field
/// visitors and `Display` machinery it cost every request more than the rest of the
/// middleware (profiled, see BENCHMARKS.md). The line is the one `tracing_subscriber`
/// would write, in either format, so the log reads the same.
pub struct AccessLine<'a> {
    /// Plain by construction (letters, digits, `-_.:`): written without escaping.
    pub request_id: &'a str,
    /// An HTTP token: never holds a quote, a backslash or a control character.
    pub method: &'a str,
    /// A route pattern of ours, or `unmatched`.
    pub route: &'a str,
    pub status: u16,
    pub latency_us: u64,
}

impl AccessLine<'_> {
    /// The target the line is logged under (what `RUST_LOG` names).
    pub const TARGET: &'static str = "otpd::http";

    /// Writes the line straight to the sink once `write_access_lines_to` was called;
    /// before that (tests, a terminal) through `tracing`.
    pub fn log(&self) {
        let Some(log) = ACCESS_LOG.get() else {
            self.trace();
            return;
        };
        let mut text = Vec::with_capacity(224);
        self.format(SystemTime::now(), log.json, &mut text);
        log.out.0.append(&text);
    }

    fn trace(&self) {
        tracing::info!(
            target: AccessLine::TARGET,
            request_id = %self.request_id,
            method = %self.method,
            route = %self.route,
            status = self.status,
            latency_us = self.latency_us,
            "request"
        );
    }

    fn format(&self, at: SystemTime, json: bool, out: &mut Vec<u8>) {
        let at = humantime::format_rfc3339_micros(at);
        let AccessLine {
            request_id,
            method,
            route,
            status,
            latency_us,
        } = self;
        let target = Self::TARGET;
        // Writing into a Vec cannot fail.
        let _ = if json {
            writeln!(
                out,
                r#"{{"timestamp":"{at}","level":"INFO","message":"request","request_id":"{request_id}","method":"{method}","route":"{route}","status":{status},"latency_us":{latency_us},"target":"{target}"}}"#
            )
        } else {
            writeln!(
                out,
                "{at}  INFO {target}: request request_id={request_id} method={method} \
                 route={route} status={status} latency_us={latency_us}"
            )
        };
    }
}

struct AccessLog {
    out: LineWriter<std::io::Stderr>,
    json: bool,
}

static ACCESS_LOG: OnceLock<AccessLog> = OnceLock::new();

/// From now on access lines go straight to `sink`, as `json` or text lines (without
/// colours: a terminal keeps `tracing`'s own).
pub fn write_access_lines_to(sink: &LogSink<std::io::Stderr>, json: bool) {
    let _ = ACCESS_LOG.set(AccessLog {
        out: sink.writer(),
        json,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test reads back, that can be held shut to play a stalled reader.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).unwrap()
        }
    }

    #[test]
    fn every_line_of_every_thread_is_written_whole_and_in_its_order_by_stop() {
        let out = Captured::default();
        let mut sink = LogSink::start(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = sink.writer();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        (&writer)
                            .write_all(format!("thread {t} line {i}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        sink.stop();
        let text = out.text();
        for t in 0..4 {
            let own: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> =
                (0..2_000).map(|i| format!("thread {t} line {i}")).collect();
            assert_eq!(own, expected);
        }
        assert_eq!(text.lines().count(), 8_000, "no other line, none broken");
    }

    #[test]
    fn a_line_logged_after_stop_is_written_straight_through() {
        let out = Captured::default();
        let mut sink = LogSink::start(out.clone()).unwrap();
        let writer = sink.writer();
        (&writer).write_all(b"before\n").unwrap();
        sink.stop();
        (&writer).write_all(b"after\n").unwrap();
        assert_eq!(out.text(), "before\nafter\n");
    }

    #[test]
    fn when_the_output_stalls_lines_beyond_the_buffer_are_dropped_and_counted() {
        let out = Captured::default();
        let mut sink = LogSink::start(out.clone()).unwrap();
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let stalled = lock(&sink.shared.out);
        let writer = sink.writer();
        // The writing thread may take up to a buffer's worth before it blocks on the
        // output; a second buffer fills behind it, and the rest must be dropped.
        let lines = 2 * MAX_BUFFERED / line.len() + 100;
        for _ in 0..lines {
            (&writer).write_all(&line).unwrap();
        }
        drop(stalled);
        sink.stop();
        let text = out.text();
        let written = text.lines().filter(|l| l.starts_with('x')).count();
        let note = text
            .lines()
            .find(|l| l.contains("log lines were dropped"))
            .expect("the drop is reported");
        let dropped: usize = note
            .trim_start_matches("otpd: ")
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(dropped >= 100, "{note}");
        assert_eq!(written + dropped, lines, "every line written or counted");
    }

    /// What `tracing_subscriber` writes for the access event, in the format asked for.
    fn traced(line: &AccessLine, json: bool) -> String {
        let out = Captured::default();
        let to = out.clone();
        let logs = tracing_subscriber::fmt()
            .with_writer(move || to.clone())
            .with_ansi(false);
        let event = || line.trace();
        if json {
            tracing::subscriber::with_default(logs.json().flatten_event(true).finish(), event);
        } else {
            tracing::subscriber::with_default(logs.finish(), event);
        }
        out.text()
    }

    #[test]
    fn the_access_line_reads_as_tracing_would_write_it_in_both_formats() {
        let line = AccessLine {
            request_id: "my-id.1:x_Y",
            method: "GET",
            route: "/sms/check",
            status: 429,
            latency_us: 1_234,
        };
        for json in [false, true] {
            let mut ours = Vec::new();
            line.format(SystemTime::now(), json, &mut ours);
            let ours = String::from_utf8(ours).unwrap();
            let theirs = traced(&line, json);
            // Everything but the time itself, which differs between the two.
            let (ours_at, ours_rest) = ours.split_at(ours.find("Z").unwrap());
            let (theirs_at, theirs_rest) = theirs.split_at(theirs.find("Z").unwrap());
            assert_eq!(ours_rest, theirs_rest, "json: {json}");
            assert_eq!(ours_at.len(), theirs_at.len(), "{ours_at} / {theirs_at}");
            assert!(ours.ends_with('\n') && ours.lines().count() == 1);
        }
    }
}
