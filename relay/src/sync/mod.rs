//! Pure sync logic, with no I/O. The streaming task in `routes::sync_stream`
//! drives it: it asks the database what these functions tell it to, and sends
//! the lines they produce.
//!
//! - [`diff`]: the `checkpoint_diff` between two views, and views derived
//!   from a shared read of what changed ([`apply_changes`]).
//! - [`page`]: buckets grouped by priority, and a page of `bucket_ops` rows
//!   turned into data lines.
//! - [`progress`]: what one stream has sent: per-bucket positions, buckets
//!   left unfinished by a superseded checkpoint, and [`Download`], the steps
//!   of sending one checkpoint's data.

pub mod diff;
pub mod page;
pub mod progress;
#[cfg(test)]
mod test_util;

pub use diff::{apply_changes, diff};
pub use page::{page, priority_groups, Page};
pub use progress::{Download, Progress, Step};
