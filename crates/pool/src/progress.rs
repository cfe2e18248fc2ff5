//! The `progress` feature: progress bars (indicatif) over `map` and `imap`, the habit
//! Python users have with tqdm.
//!
//! ```no_run
//! use mproc_pool::Pool;
//! fn square(x: u64) -> u64 { x * x }
//! let pool = Pool::new(4).unwrap();
//! let v = pool.map_progress(square, 0..100_000u64).unwrap();
//! let w: Vec<_> = pool.imap(square, 0..1000u64).progress(Some(1000)).collect();
//! ```
use crate::error::MapError;
use crate::pool::Pool;
use crate::result::IMap;
use indicatif::{ProgressBar, ProgressBarIter, ProgressIterator};
use mproc_core::{Deadline, Decode, Encode, Message};
use std::time::Duration;

impl Pool {
    /// [`Pool::map`] with a progress bar on stderr that advances as items finish.
    pub fn map_progress<A: Message, R: Message>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> Result<Vec<R>, MapError> {
        let r = self.map_async(f, items);
        let bar = ProgressBar::new(r.job.len() as u64);
        while !r.job.wait(Deadline::after(Duration::from_millis(100))) {
            bar.set_position(r.job.lock().done as u64);
        }
        bar.set_position(r.job.lock().done as u64);
        bar.finish();
        r.get()
    }
}

impl<I, R> IMap<I, R>
where
    I: Iterator,
    I::Item: Encode,
    R: Decode,
{
    /// Wraps the results in a progress bar on stderr (`len`: the number of items, if
    /// known, for a bar rather than a counter).
    pub fn progress(self, len: Option<u64>) -> ProgressBarIter<Self> {
        match len {
            Some(n) => self.progress_count(n),
            None => self.progress_with(ProgressBar::no_length()),
        }
    }
}
